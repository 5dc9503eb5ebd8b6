"""Progress in a batch job's log is plain lines every so often, never a carriage-return update per
point; on a terminal it is tqdm's bar."""
import io
import shutil

from tqdm import tqdm

from losslandscape.engine import progress
from tests.conftest import run_script


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_line_per_interval_and_one_at_the_end():
    clock, log = FakeClock(), io.StringIO()
    bar = progress.LogProgress(10, 'loss surface', 'pt', stream=log, interval=30, clock=clock)
    for second in range(1, 11):   # a point every 10 s
        clock.now = 10.0 * second
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert '\r' not in log.getvalue()
    assert lines == ['loss surface: 3/10 pt (30 %), 30 s elapsed, about 1 min 10 s left',
                     'loss surface: 6/10 pt (60 %), 1 min 0 s elapsed, about 40 s left',
                     'loss surface: 9/10 pt (90 %), 1 min 30 s elapsed, about 10 s left',
                     'loss surface: 10/10 pt (100 %), 1 min 40 s elapsed']


def test_what_happens_within_a_slow_point_reaches_the_log():
    clock, log = FakeClock(), io.StringIO()
    with progress.LogProgress(4, 'hessian eigenvalues', 'pt', initial=1, stream=log, interval=30, clock=clock) as bar:
        clock.now = 31
        bar.set_postfix_str('point 2: 12 products')
        clock.now = 40
        bar.set_postfix_str('point 2: 20 products')   # within the interval: no line
    assert log.getvalue().splitlines() == ['hessian eigenvalues: 1/4 pt (25 %), 31 s elapsed; point 2: 12 products',
                                           'hessian eigenvalues: 1/4 pt (25 %), 40 s elapsed; point 2: 20 products']


def test_an_inner_bar_leaves_no_last_line_and_a_disabled_one_says_nothing():
    clock, log = FakeClock(), io.StringIO()
    with progress.LogProgress(3, 'batches', 'batch', stream=log, clock=clock, leave=False) as bar:
        bar.update(3)
    with progress.LogProgress(3, 'batches', 'batch', stream=log, clock=clock, interval=0, disable=True) as bar:
        bar.update(3)
    assert log.getvalue() == ''


def test_a_terminal_gets_the_bar():
    assert isinstance(progress.progress_bar(5, 'x', 'pt', stream=Terminal()), tqdm)
    assert isinstance(progress.progress_bar(5, 'x', 'pt', stream=io.StringIO()), progress.LogProgress)
    assert list(progress.progress_iter([1, 2, 3], 'x', 'pt', stream=io.StringIO())) == [1, 2, 3]


def test_a_run_whose_stderr_is_a_file_writes_no_carriage_return(tmp_path, checkpoints):
    model = shutil.copy(checkpoints['mlp'], tmp_path / 'mlp.t7')
    run = run_script('plot_surface.py', '--dataset', 'digits', '--model', 'mlp', '--model_file', model,
                     '--x=-1:1:5', '--surf_file', tmp_path / 's.h5')
    assert run.returncode == 0, run.stderr
    # (The text read back has carriage returns turned into newlines: a tqdm bar shows as '%|'.)
    assert '%|' not in run.stderr and run.stderr.count('loss surface') == 1, run.stderr
    assert 'loss surface: 5/5 pt (100 %)' in run.stderr, run.stderr
