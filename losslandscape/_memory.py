"""Handing freed memory back to the system: glibc keeps what a process frees in its heap (up to
the trim threshold, and any free block below a live one), so the resident set after making a
large model's directions tensor by tensor, or after loading it, would stay at its peak. A run
calls ``release_freed_memory`` after such steps, so the memory it holds is what it uses."""
import ctypes
import sys

RELEASE_EVERY_BYTES = 1 << 20   # make_release_counter: release after about this many bytes were freed


def _malloc_trim():
    if not sys.platform.startswith('linux'):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):   # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_freed_memory():
    """malloc_trim(0) where the C library is glibc: every free page of the heap goes back to the
    system. Changes no value; costs about a millisecond. Returns whether anything could be done."""
    return bool(_TRIM is not None and _TRIM(0) is not None)


class ReleaseCounter:
    """``freed(nbytes)`` after a temporary of ``nbytes`` is dropped; memory is released once
    about RELEASE_EVERY_BYTES have been freed since the last release."""

    def __init__(self, every=RELEASE_EVERY_BYTES):
        self.every, self.pending = every, 0

    def freed(self, nbytes):
        self.pending += nbytes
        if self.pending >= self.every:
            release_freed_memory()
            self.pending = 0
