"""Command-line plumbing shared by every script: the bad-input error and the exit-status-2 wrapper.

A user mistake (malformed grid, missing file, mismatched checkpoint ...) raises ``UsageError`` from
wherever it is detected; ``run_main`` turns it into one line on stderr and exit status 2, the same
contract argparse uses for its own errors. Anything else is a bug and keeps its traceback.
"""
import argparse
import os
import sys


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2, no traceback."""


def check_file_exists(path, what):
    """Raise UsageError unless ``path`` is an existing regular file. ``what`` names the flag."""
    if not path:
        raise UsageError(f'{what} is required')
    if not os.path.exists(path):
        raise UsageError(f'{what} {path!r} does not exist')
    if not os.path.isfile(path):
        raise UsageError(f'{what} {path!r} is not a file')


def report_usage_error(prog, err, show=True):
    """Print the one-line error (only where ``show``: under MPI only rank 0 speaks)."""
    if show:
        message = ' '.join(str(err).split())  # one line, whatever the message held
        print(f'{prog}: error: {message}', file=sys.stderr, flush=True)


def run_main(main, argv=None):
    """Call ``main(argv)``; a UsageError becomes a one-line message and exit status 2."""
    prog = os.path.basename(sys.argv[0]) if argv is None else 'main'
    try:
        return main(argv)
    except UsageError as err:
        report_usage_error(prog, err, show=_is_mpi_root())
        sys.exit(2)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        sys.exit(130)


def _is_mpi_root():
    # Only consult MPI when the script already imported it; never start MPI just to print an error.
    mpi = sys.modules.get('mpi4py.MPI')
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return True
    return mpi.COMM_WORLD.Get_rank() == 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump): 'prog: error: ...', exit status 2."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')
