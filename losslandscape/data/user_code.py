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
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

from losslandscape.errors import UsageError


def import_factory(spec, what):
    """Resolve 'package.module:callable' or raise UsageError saying what is wrong (``what`` names
    the flag). The package is looked for in the working folder, then on sys.path (module docstring)."""
    module_name, _, attr = spec.partition(':')
    # A relative name ('.models') would make importlib raise TypeError, not ImportError.
    if not module_name or not attr or module_name.startswith('.'):
        raise UsageError(f'{what} {spec!r}: expected package.module:factory')
    try:
        module = import_user_module(module_name)
    except ImportError as err:
        raise UsageError(f'{what} {spec!r}: cannot import {module_name!r} ({err})') from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f'{what} {spec!r}: {module_name!r} has no callable {attr!r}')
    return factory


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
