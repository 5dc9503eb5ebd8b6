"""Command-line plumbing shared by every script: the bad-input error and the exit-status-2 wrapper.

A user mistake raises errors.UsageError from wherever it is detected; ``run_main`` turns it into
one line on stderr and exit status 2, the same contract argparse uses for its own errors. Anything
else is a bug and keeps its traceback.
"""
import argparse
import os
import sys

from losslandscape.errors import UsageError
from losslandscape.parallel.mpi_comm import is_speaking_rank


def check_file_exists(path, what):
    """Raise UsageError unless ``path`` is an existing regular file. ``what`` names the flag
    ('--surf_file') or, ending in '=', the Python keyword ('surf_file=') it was given as."""
    if not path:
        raise UsageError(f'{what} is required')
    given = f'{what}{path!r}' if what.endswith('=') else f'{what} {path!r}'
    if not os.path.exists(path):
        raise UsageError(f'{given} does not exist')
    if not os.path.isfile(path):
        raise UsageError(f'{given} is not a file')


def check_writable_folder(folder, what, hint='', may_create=False):
    """Raise UsageError unless ``folder`` is a writable folder or, with ``may_create``, can be
    made: its nearest existing part is one. The message is ``what`` + the folder + the problem,
    then ``hint`` (optional: what to do instead)."""
    existing = os.path.abspath(folder)
    while may_create and not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    problem = 'is not a folder' if os.path.exists(existing) and not os.path.isdir(existing) else \
        'does not exist' if not os.path.isdir(existing) else \
        'is not writable' if not os.access(existing, os.W_OK | os.X_OK) else ''
    if problem:
        raise UsageError(f'{what} {existing!r} {problem}' + (f'; {hint}' if hint else ''))


def check_output_folder(path, what, hint=''):
    """Raise UsageError unless the folder that is to hold the file ``path`` is writable or can be
    made (its missing folders are made when the file is written, after every check has passed:
    file_safety.make_parent_folder). ``what`` names the flag or file."""
    check_writable_folder(os.path.dirname(os.path.abspath(path)), f'{what} {path!r}: its folder', hint,
                          may_create=True)


def report_usage_error(prog, err, show=True):
    """Print the one-line error (only where ``show``: under MPI only rank 0 speaks)."""
    if show:
        message = ' '.join(str(err).split())  # one line, whatever the message held
        print(f'{prog}: error: {message}', file=sys.stderr, flush=True)


def run_as_script(main):
    """Run a script's ``main`` from the command line and exit: status 0, or the int ``main``
    returns (scripts' mains may return what they wrote, for callers in Python); 2 for a UsageError
    and 130 for Ctrl-C (run_main). Every way of starting a script ends here: ``python -m
    losslandscape.<script>``, the checkout's files and the console commands."""
    result = run_main(main)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


def run_main(main, argv=None):
    """Call ``main(argv)``; a UsageError becomes a one-line message and exit status 2."""
    prog = os.path.basename(sys.argv[0]) if argv is None else 'main'
    try:
        return main(argv)
    except UsageError as err:
        report_usage_error(prog, err, show=is_speaking_rank())
        sys.exit(2)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        sys.exit(130)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Ends each option's help with its default, unless the help already speaks of it or there is
    none worth stating (flags that are off, empty strings, None)."""

    def _get_help_string(self, action):
        text, default = action.help or '', action.default
        if not action.option_strings or 'default' in text or default is None or default is False \
                or default == '' or default is argparse.SUPPRESS:
            return text
        return text + ' (default: %(default)s)'


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump): 'prog: error: ...', exit status 2; under MPI
    only rank 0 prints it. Every option's help states its default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('formatter_class', DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n' if is_speaking_rank() else None)
