"""Progress of a long run: tqdm's bar on a terminal, plain lines in a log.

A batch job's stderr is a file: tqdm's carriage-return updates there become one long line per
update (one per grid point), unreadable and large. So when the stream is not a terminal, progress
is a plain line every LOG_INTERVAL_SECONDS -- points done, elapsed, estimated time left, and
whatever the evaluator says within a point (set_postfix_str) -- and one at the end.
"""
import sys
import time

from tqdm import tqdm

LOG_INTERVAL_SECONDS = 30.0


def progress_bar(total, desc, unit, initial=0, stream=None, leave=True, disable=False, mininterval=0.5):
    """A tqdm bar on a terminal, else a LogProgress on ``stream`` (default: stderr); both take
    update(n), set_postfix_str(text) and close(), and work as context managers. ``leave``: keep
    the bar (write the last line) when it closes; ``disable``: show nothing."""
    stream = stream if stream is not None else sys.stderr
    if _is_terminal(stream):
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True,
                    leave=leave, disable=disable, mininterval=mininterval)
    return LogProgress(total, desc, unit, initial=initial, stream=stream, leave=leave, disable=disable)


def progress_iter(iterable, desc, unit, total=None, **options):
    """Each item of ``iterable``, with progress_bar's progress (``total``: default len(iterable))."""
    total = len(iterable) if total is None else total
    with progress_bar(total, desc, unit, **options) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # a closed or unusual stream: write lines
        return False


class LogProgress:
    """Progress as plain lines (module docstring): ``interval`` seconds apart at most once per
    update, and a last line when it closes after any progress since the previous line."""

    def __init__(self, total, desc, unit, initial=0, stream=None, interval=None, clock=time.monotonic, leave=True,
                 disable=False):
        interval = LOG_INTERVAL_SECONDS if interval is None else interval
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.leave, self.disable = leave, disable
        self.stream, self.interval, self.clock = stream if stream is not None else sys.stderr, interval, clock
        self.initial, self.postfix = initial, ''
        self.started = self.last_line = clock()
        self.shown = None   # (n, postfix) of the last line written

    def update(self, n=1):
        self.n += n
        self._line_if_due()

    def set_postfix_str(self, text='', refresh=True):
        self.postfix = text
        self._line_if_due()

    def close(self):
        if self.leave and self.shown != (self.n, self.postfix) and (self.n > self.initial or self.shown is not None):
            self._write_line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _line_if_due(self):
        if self.clock() - self.last_line >= self.interval:
            self._write_line()

    def _write_line(self):
        if self.disable:
            return
        now = self.clock()
        elapsed = now - self.started
        line = f'{self.desc}: {self.n}/{self.total} {self.unit}'
        if self.total:
            line += f' ({100 * self.n / self.total:.0f} %)'
        line += f', {_duration(elapsed)} elapsed'
        done_now = self.n - self.initial
        if 0 < done_now and self.n < self.total:
            line += f', about {_duration(elapsed / done_now * (self.total - self.n))} left'
        if self.postfix:
            line += f'; {self.postfix}'
        print(line, file=self.stream, flush=True)
        self.last_line, self.shown = now, (self.n, self.postfix)


def _duration(seconds):
    """'42 s', '3 min 5 s', '2 h 07 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds} s'
    if seconds < 3600:
        return f'{seconds // 60} min {seconds % 60} s'
    return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min'
