"""Importing the user's own code named on the command line: ``package.module:callable`` for
--model, --dataset and --loss_name.

Users keep their code in the folder they work in and expect it found, as ``python -m`` finds it,
also when they run ``python plot_surface.py`` from the checkout (which puts the script's folder on
sys.path, not theirs) or an installed console command. So the top-level package or module a spec
names is looked for in the working folder first and, when it is there, loaded from that path: the
user's ``grid.py`` or ``objective.py`` is theirs, whatever else is installed. Only when the working
folder does not hold it is it imported from sys.path (an installed package, torchvision, ...).

The user's module may import its own top-level siblings (``import helpers`` in their
``models.py``), at import time or later when the factory runs. For those, a finder that looks in
the working folder is appended to sys.meta_path once: last, after every other finder, so it only
supplies names nothing else provides and never replaces a module of the standard library or of an
installed package. sys.path itself is never changed.

A spec may give the factory keyword arguments, ``package.module:factory(depth=20, name='a')``:
each value a Python literal (numbers, strings, booleans, None, tuples, lists, dicts of those),
parsed with ast.literal_eval and never executed. ``canonical_spec`` writes a spec one way
(keywords sorted, values as repr), which is what the files record as the run's identity.
"""
import ast
import dataclasses
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import os
import sys

from losslandscape.errors import UsageError


@dataclasses.dataclass(frozen=True)
class FactorySpec:
    """A parsed 'package.module:factory(key=value, ...)'."""
    module: str
    name: str
    kwargs: dict

    def text(self):
        """The spec written one way: keywords sorted, values as their repr."""
        args = ', '.join(f'{key}={value!r}' for key, value in sorted(self.kwargs.items()))
        return f'{self.module}:{self.name}' + (f'({args})' if self.kwargs else '')


def parse_factory_spec(spec, what):
    """The FactorySpec of ``spec`` or a UsageError saying what is wrong (``what`` names the flag)."""
    module_name, _, call = spec.partition(':')
    name, paren, rest = call.partition('(')
    name = name.strip()
    # A relative name ('.models') would make importlib raise TypeError, not ImportError.
    if not module_name or not name.isidentifier() or module_name.startswith('.'):
        raise UsageError(f'{what} {spec!r}: expected package.module:factory or package.module:factory(key=value, ...)')
    kwargs = {}
    if paren:
        try:
            tree = ast.parse(name + paren + rest, mode='eval').body
        except SyntaxError:
            raise UsageError(f'{what} {spec!r}: the arguments are not valid Python syntax') from None
        if not isinstance(tree, ast.Call) or tree.args or any(k.arg is None for k in tree.keywords):
            raise UsageError(f'{what} {spec!r}: give the factory keyword arguments only, e.g. factory(depth=20)')
        for keyword in tree.keywords:
            try:
                kwargs[keyword.arg] = ast.literal_eval(keyword.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                raise UsageError(f'{what} {spec!r}: the value of {keyword.arg}= is not a Python literal '
                                 '(a number, string, boolean, None, or a tuple, list or dict of those)') from None
    return FactorySpec(module_name.strip(), name, kwargs)


def canonical_spec(spec):
    """``spec`` written one way when it is a factory spec that parses (else as it is): the same
    factory and arguments are the same run, however they were spaced or ordered."""
    if not isinstance(spec, str) or ':' not in spec:
        return spec
    try:
        return parse_factory_spec(spec, '').text()
    except UsageError:
        return spec


def import_factory(spec, what):
    """The callable 'package.module:factory(key=value, ...)' names, with its keyword arguments
    bound, or a UsageError saying what is wrong (``what`` names the flag). The package is looked
    for in the working folder, then on sys.path (module docstring)."""
    parsed = parse_factory_spec(spec, what)
    try:
        module = import_user_module(parsed.module)
    except ImportError as err:
        raise UsageError(f'{what} {spec!r}: cannot import {parsed.module!r} ({err})') from None
    factory = getattr(module, parsed.name, None)
    if not callable(factory):
        raise UsageError(f'{what} {spec!r}: {parsed.module!r} has no callable {parsed.name!r}')
    if not parsed.kwargs:
        return factory
    try:
        inspect.signature(factory).bind_partial(**parsed.kwargs)
    except TypeError as err:
        raise UsageError(f'{what} {spec!r} cannot be called as given ({err})') from None
    except ValueError:   # no signature to check (a builtin): its call tells
        pass
    return functools.partial(factory, **parsed.kwargs)


def call_factory(factory, spec, what, *args, **optional):
    """``factory(*args, **optional)`` for the factory of ``spec`` (its own keyword arguments already
    bound), passing only the ``optional`` keywords its signature takes (a data set factory need
    not take root= or train=). A factory that cannot be called so, or that raises, is a UsageError
    naming it and why."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):   # a builtin or extension callable without one: call as asked
        signature = None
    if signature is not None:
        takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        optional = {k: v for k, v in optional.items() if takes_any or k in signature.parameters}
        try:
            signature.bind(*args, **optional)
        except TypeError as err:
            raise UsageError(f'{what} {spec!r} cannot be called as given ({err})') from None
    try:
        return factory(*args, **optional)
    except UsageError:
        raise
    except Exception as err:  # the user's code failed: say so in one line, as for any bad input
        first = (str(err).strip().splitlines() or [''])[0]
        raise UsageError(f'{what} {spec!r} raised {type(err).__name__}' + (f': {first}' if first else '')) from None


def takes_keyword(factory, name):
    """Whether ``factory`` accepts the keyword argument ``name`` (True when it cannot be told)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY) for p in parameters)


def import_user_module(module_name, folder=None):
    """The module ``module_name`` ('mypkg.models'), its top-level package loaded from ``folder``
    (default: the working folder) when that folder holds it, else imported from sys.path."""
    folder = os.path.realpath(folder or os.getcwd())
    top_level = module_name.partition('.')[0]
    _find_siblings_in(folder)
    spec = importlib.machinery.PathFinder.find_spec(top_level, [folder])
    # A folder without __init__.py (output, data) would be a namespace package: the working
    # folder's only when nothing on sys.path provides the name (the finder, last).
    if spec is not None and spec.origin not in (None, 'namespace'):
        _load_top_level(top_level, spec, folder)
        return importlib.import_module(module_name)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != top_level:   # a missing dependency inside the user's module says itself
            raise
        raise ModuleNotFoundError(f'No module named {top_level!r} in the working folder {folder} or on sys.path',
                                  name=top_level) from None


def _load_top_level(name, spec, folder):
    """Put the package or module ``name`` of ``folder`` into sys.modules (once)."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        if _lives_in(loaded, folder):
            return
        where = getattr(loaded, '__file__', None) or list(getattr(loaded, '__path__', [])) or 'built in'
        raise ImportError(f'a module {name!r} is already imported from {where}, so the one in the working folder '
                          f'{folder} cannot be: rename yours')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _lives_in(module, folder):
    places = [getattr(module, '__file__', None)] + list(getattr(module, '__path__', []))
    return any(place and os.path.realpath(place).startswith(folder + os.sep) for place in places)


class WorkingFolderFinder(importlib.abc.MetaPathFinder):
    """Finds top-level modules in one folder, after every other finder (module docstring)."""

    def __init__(self, folder):
        self.folder = folder

    def find_spec(self, name, path=None, target=None):
        if path is not None:   # a submodule: its package's own __path__ finds it
            return None
        return importlib.machinery.PathFinder.find_spec(name, [self.folder])


def _find_siblings_in(folder):
    if not any(isinstance(finder, WorkingFolderFinder) and finder.folder == folder for finder in sys.meta_path):
        sys.meta_path.append(WorkingFolderFinder(folder))
