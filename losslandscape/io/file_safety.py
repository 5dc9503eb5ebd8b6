"""Writing files so that no reader ever sees half of one, and one writer per file at a time.

``atomic_path`` is the one way this suite replaces a file: everything is written under a temporary
name in the target's folder (a rename within one file system is atomic), the temporary gets the
mode a plain ``open(path, 'w')`` would give (0o666 less the umask), and it is renamed over the
target only when the writing finished without error; on any failure it is removed and the old
file is left as it was. ``FileLock`` keeps two runs from writing the same file at once, and
``remove_stale_temporaries`` clears what a killed writer left.

A leaf module: it imports nothing of the suite but cli's UsageError and the test hook fault_injection.
"""
import contextlib
import errno
import fcntl
import os
import tempfile

from losslandscape._testing import fault_injection
from losslandscape.errors import UsageError

TMP_SUFFIX = '.tmp'


def current_umask():
    """The process's umask, read without changing it where Linux tells it (/proc), so a thread
    creating a file meanwhile is not given mode 0o666 by the set-and-restore fallback."""
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_prefix(path):
    """The start of the temporary names ``atomic_path`` uses for ``path`` (hidden, beside it)."""
    return '.' + os.path.basename(path) + '.'


def make_parent_folder(path):
    """Make the missing folders above the file ``path`` (a run's output folder need not exist:
    the checks before any writing only made sure it can be made)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(f'cannot make the folder {folder!r} for {path!r} ({err.strerror or err})') from None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` to write the whole file to; when the block ends
    without error it is renamed over ``path``, otherwise removed (``path`` stays untouched).

    The temporary exists (empty) when the block starts. A folder in which it cannot be made is
    a UsageError naming ``path``."""
    make_parent_folder(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=TMP_SUFFIX, dir=folder)
    except OSError as err:
        raise UsageError(f'cannot write {path!r} ({err.strerror or err})') from None
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes 0o600; after the writing, in case a writer recreated the file.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fault_injection.reached('file')   # tests kill here: one file in place, the next not yet


def remove_stale_temporaries(path):
    """Delete the temporary files a killed writer of ``path`` left (only call with its lock held)."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = temporary_prefix(path)
    for name in os.listdir(folder):
        if name.startswith(prefix) and name.endswith(TMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))


class FileLock:
    """An exclusive, non-blocking lock on ``path + '.lock'``, held while a run writes ``path``.

    fcntl locks vanish with their process, so a killed run never leaves a stale lock behind."""

    def __init__(self, path):
        self.lock_path = path + '.lock'
        self.fd = None

    def acquire(self):
        make_parent_folder(self.lock_path)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise UsageError(
                    f'{self.lock_path[:-5]!r} is being written by another run (lock {self.lock_path!r} '
                    'is held); wait for it to finish, or pass another --surf_file') from None
            # The holder before us may have removed the lock file after we opened it: retry on
            # the file that is there now, so two runs can never both hold "the" lock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f'{os.getpid()}\n'.encode())
                self.fd = fd
                return self
            os.close(fd)

    def release(self):
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.lock_path)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
