"""The automatic compute configuration (choosing.py): recorded in the surface file, reused on
resume (no timing, values equal bit for bit), overridden by explicit flags, within 1e-5 of the
plain configuration, the same on every MPI rank; bad values refused."""
import os
import shutil
import sys

import h5py
import numpy as np
import pytest
import torch

import losslandscape
from losslandscape import hessian_spectrum, plot_hessian_eigen, plot_surface, sharpness
from losslandscape.compute import choosing, configuration, runtime, timing_search
from losslandscape.curvature import hessian
from losslandscape.data import batch_sources, datasets
from losslandscape.engine import run_setup
from losslandscape.io import hdf5_layout
from losslandscape.models import loading
from losslandscape.objectives import objective
from losslandscape.parallel.mpi_comm import SerialComm
from tests.conftest import assert_one_line_error, call_main, run_script, snapshot, train_briefly
from tests.test_plot_surface import DATA, expected_loss, local_copy

MPIEXEC = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
GRID = ['--x=-1:1:4', '--y=-1:1:3', '--xnorm', 'filter', '--ynorm', 'filter', '--xignore', 'biasbn']
FORCED = {'channels_last': True, 'batch_size': 32, 'fold_bn': True}   # what the fake timings below favour


def run(capsys, *argv, script=plot_surface, common=DATA):
    """plot_surface.py (or ``script``) in this process, with the ``common`` flags; returns its stdout."""
    from losslandscape.cli.parsing import run_main
    try:
        code = run_main(script.main, [str(a) for a in (*common, *argv)]) or 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def record(path):
    return hdf5_layout.decoded_attrs(hdf5_layout.read_surface(str(path)).attrs)[hdf5_layout.COMPUTE_ATTR]


def losses(path):
    return hdf5_layout.read_surface(str(path)).values['train_loss']


@pytest.fixture
def timings(monkeypatch):
    """Search.measure with the real probe losses but fake, deterministic times favouring FORCED:
    channels_last, then BatchNorm folding, then batch 32 are each faster. Returns the list of the
    configurations measured."""
    real, measured = timing_search.Search.measure, []

    def fake(self, config, **passes):
        got = real(self, config, **passes)
        measured.append(config)
        if got is None:
            return None
        seconds = 1.0 - 0.3 * config.channels_last - 0.2 * config.fold_bn - 0.1 * (config.batch_size == 32)
        return seconds, got[1]
    monkeypatch.setattr(timing_search.Search, 'measure', fake)
    return measured


def partial_copy(source, target, undone):
    """``source`` as a run killed after some points would have left it: points ``undone`` not done."""
    shutil.copy(source, target)
    with h5py.File(target, 'r+') as f:
        for name in ('train_loss', 'train_acc'):
            f[f'done/{name}'][undone] = False
            f[name][undone] = np.nan


def test_the_choice_is_recorded_and_reused_on_resume_without_timing(tmp_path, checkpoints, capsys, timings,
                                                                    monkeypatch):
    common = ['--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID,
              '--compute_config', 'search']
    out = run(capsys, *common, '--surf_file', tmp_path / 'full.h5')
    assert 'compute: channels_last, batch 32, BatchNorm folded (' in out
    assert record(tmp_path / 'full.h5') == {'surface': {**FORCED, 'how': 'search'}}
    assert timings[0] == configuration.PLAIN and configuration.ComputeConfig(**FORCED) in timings
    run(capsys, *common, '--compute_config', 'plain', '--surf_file', tmp_path / 'plain.h5')
    # The configuration matters to the bits (so the resume below could not equal by chance) ...
    assert not np.array_equal(losses(tmp_path / 'full.h5'), losses(tmp_path / 'plain.h5'))

    partial_copy(tmp_path / 'full.h5', tmp_path / 'resumed.h5', np.s_[1:, 1:])
    timings.clear()
    out = run(capsys, *common, '--surf_file', tmp_path / 'resumed.h5')
    assert timings == []                                       # ... the resumed run timed nothing ...
    assert 'compute: channels_last, batch 32, BatchNorm folded (reused from' in out and '6 points computed' in out
    np.testing.assert_array_equal(losses(tmp_path / 'resumed.h5'), losses(tmp_path / 'full.h5'))   # ... bit for bit
    assert record(tmp_path / 'resumed.h5') == record(tmp_path / 'full.h5')
    # Under the default (auto) too, and with the timing broken: a recorded file is never timed.
    monkeypatch.setattr(timing_search.Search, 'measure', lambda *a: pytest.fail('timed a recorded run'))
    partial_copy(tmp_path / 'full.h5', tmp_path / 'auto.h5', np.s_[0, :])
    run(capsys, *common[:-2], '--surf_file', tmp_path / 'auto.h5')
    np.testing.assert_array_equal(losses(tmp_path / 'auto.h5'), losses(tmp_path / 'full.h5'))


def test_explicit_flags_override_the_choice_but_never_a_record(tmp_path, checkpoints, capsys, timings):
    common = ['--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID,
              '--compute_config', 'search']
    out = run(capsys, *common, '--batch_size', '64', '--no-channels_last', '--surf_file', tmp_path / 'given.h5')
    assert {(c.batch_size, c.channels_last) for c in timings} == {(64, False)}   # only folding was timed
    assert record(tmp_path / 'given.h5')['surface'] == {'channels_last': False, 'batch_size': 64, 'fold_bn': True,
                                                        'how': 'search'}
    assert '--no-channels_last given, --batch_size 64 given' in out
    # Over a recorded configuration a flag that changes a part is refused and the file left as it
    # was: its other points would round otherwise, and its record could tell only one configuration.
    run(capsys, *common, '--surf_file', tmp_path / 'full.h5')
    full, resumed = tmp_path / 'full.h5', tmp_path / 'resumed.h5'
    partial_copy(full, resumed, np.s_[2, :])
    timings.clear()
    for flags, words in ((['--no-fold_bn'], ['--fold_bn;', '--no-fold_bn would']),
                         (['--batch_size', '64'], ['--batch_size 32;', '--batch_size 64 would']),
                         (['--compute_config', 'plain'], ['--channels_last, --batch_size 32, --fold_bn;',
                                                          '--compute_config plain would']),
                         (['--batch_size', '32', '--no-channels_last'], ['--channels_last;', '--no-channels_last'])):
        before = snapshot(tmp_path)
        code, err = call_main(plot_surface.main, [*DATA, *common, *flags, '--surf_file', resumed], capsys)
        assert_one_line_error(code, err, [str(resumed), *words])
        assert snapshot(tmp_path) == before
    assert timings == []
    # Flags that agree with the record are taken: the file ends as an uninterrupted run.
    run(capsys, *common, '--batch_size', '32', '--fold_bn', '--surf_file', resumed)
    assert timings == [] and record(resumed) == record(full)
    np.testing.assert_array_equal(losses(resumed), losses(full))
    # Every part given: nothing is timed, even with search.
    run(capsys, *common, '--batch_size', '16', '--channels_last', '--no-fold_bn', '--surf_file', tmp_path / 'all.h5')
    assert timings == []
    assert record(tmp_path / 'all.h5')['surface']['how'] == 'given'


def test_chosen_values_are_within_1e_5_of_the_plain_configuration(tmp_path, checkpoints, capsys):
    """Real timings: whatever the search picks keeps the plain values within 1e-5 relative, and the
    values of an independent computation."""
    model = local_copy(tmp_path, checkpoints['cnn_bn'])
    common = ['--model', 'cnn_bn', '--model_file', model, *GRID]
    run(capsys, *common, '--compute_config', 'search', '--surf_file', tmp_path / 'chosen.h5')
    run(capsys, *common, '--compute_config', 'plain', '--surf_file', tmp_path / 'plain.h5')
    chosen, plain = (hdf5_layout.read_surface(str(tmp_path / n)) for n in ('chosen.h5', 'plain.h5'))
    assert record(tmp_path / 'chosen.h5')['surface']['how'] == 'search'
    assert record(tmp_path / 'plain.h5')['surface'] == {'channels_last': False, 'batch_size': 128, 'fold_bn': False,
                                                        'how': 'plain'}
    np.testing.assert_allclose(chosen.values['train_loss'], plain.values['train_loss'], rtol=1e-5, atol=0)
    np.testing.assert_allclose(chosen.values['train_acc'], plain.values['train_acc'], atol=0.6)
    loss, _ = expected_loss(model, chosen.dir_file, chosen.xcoordinates[3], chosen.ycoordinates[0])
    assert chosen.values['train_loss'][0, 3] == pytest.approx(loss, rel=1e-5)


def test_forced_configuration_is_within_1e_5_of_plain(tmp_path, checkpoints, capsys, timings):
    """The configuration the fake timings force (channels_last, batch 32, folded and fused) on the
    digits cnn_bn, with weights and with states directions."""
    model = local_copy(tmp_path, checkpoints['cnn_bn'])
    for dir_type in ('weights', 'states'):
        common = ['--model', 'cnn_bn', '--model_file', model, *GRID, '--dir_type', dir_type]
        run(capsys, *common, '--compute_config', 'search', '--surf_file', tmp_path / f'forced_{dir_type}.h5')
        run(capsys, *common, '--compute_config', 'plain', '--surf_file', tmp_path / f'plain_{dir_type}.h5')
        assert record(tmp_path / f'forced_{dir_type}.h5')['surface'] == {**FORCED, 'how': 'search'}
        forced, plain = losses(tmp_path / f'forced_{dir_type}.h5'), losses(tmp_path / f'plain_{dir_type}.h5')
        np.testing.assert_allclose(forced, plain, rtol=1e-5, atol=0)


def test_a_candidate_that_changes_the_values_is_discarded(tmp_path, checkpoints, capsys, monkeypatch):
    """A folding that moved the probe loss by more than VALUE_RTOL must not be chosen, however fast."""
    real = timing_search.Search.measure

    def folding_is_fast_but_wrong(self, config, **passes):
        seconds, loss = real(self, config, **passes)
        return (0.1, loss * (1 + 1e-4)) if config.fold_bn else (1.0, loss)
    monkeypatch.setattr(timing_search.Search, 'measure', folding_is_fast_but_wrong)
    out = run(capsys, '--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID,
              '--compute_config', 'search', '--surf_file', tmp_path / 's.h5')
    assert record(tmp_path / 's.h5')['surface']['fold_bn'] is False
    assert 'discarded for changing the loss by more than 1e-05' in out


def test_batchnorm_is_folded_by_rule_not_by_timing(tmp_path, checkpoints, capsys, monkeypatch):
    """Folding only removes work: it is taken even when the (noisy) clock says it is slower, after
    one pass of the folded model checks its loss; the layout and batch size are still timed."""
    real, measured = timing_search.Search.measure, []

    def folding_looks_slow(self, config, **passes):
        seconds, loss = real(self, config, **passes)
        measured.append(config)
        return (2.0 if config.fold_bn else 1.0), loss
    monkeypatch.setattr(timing_search.Search, 'measure', folding_looks_slow)
    run(capsys, '--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID,
        '--compute_config', 'search', '--surf_file', tmp_path / 's.h5')
    assert record(tmp_path / 's.h5')['surface']['fold_bn'] is True
    unfolded = [c for c in measured if not c.fold_bn]
    assert unfolded == [configuration.PLAIN]        # the reference alone: nothing unfolded is compared
    assert {c.channels_last for c in measured} == {False, True} and len({c.batch_size for c in measured}) > 1


@pytest.fixture
def counted_sums(monkeypatch):
    """Every ClassificationObjective pass over a batch (sums_and_units, which sums calls too): its
    number of samples, in order."""
    real, samples = objective.ClassificationObjective.sums_and_units, []

    def counting(self, model, batch, amp=False, units=True):
        samples.append(objective.first_tensor(batch).shape[0])
        return real(self, model, batch, amp, units)
    monkeypatch.setattr(objective.ClassificationObjective, 'sums_and_units', counting)
    return samples


def test_the_search_warms_each_model_on_one_batch_and_passes_no_more_than_it_times(
        tmp_path, checkpoints, capsys, monkeypatch, counted_sums):
    """The search is the start-up of a model's first run on a machine, so it does no work it does
    not use: a model's (layout x folding x dtype) first pass at a batch size warms it up on its
    first batch, which still counts towards the loss (a separate warm-up batch only where the pass
    is one batch); the folding's checking pass is the folded model's first-round pass of the
    layout step, and the layout step's passes of its choice its first round of the batch-size
    step; the --amp hint is one pass."""
    real, measured = timing_search.Search.measure, []

    def measure(self, config):
        before = len(counted_sums)
        got = real(self, config)
        measured.append((config, self.amp, len(counted_sums) - before, len(list(self.probe.batches(config)))))
        # channels_last a little faster: chosen, yet the other layout is a contender for the second round
        return None if got is None else (1.0 - 0.1 * config.channels_last, got[1])
    monkeypatch.setattr(timing_search.Search, 'measure', measure)
    monkeypatch.setattr(runtime, 'native_bf16', lambda device: True)   # so the hint is timed
    # Repeated short passes are test_a_pass_shorter_than_min_pass_seconds_is_repeated_...'s.
    monkeypatch.setattr(timing_search, 'MIN_PASS_SECONDS', 0.0)
    run(capsys, '--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID,
        '--compute_config', 'search', '--surf_file', tmp_path / 's.h5')
    warmed = set()
    assert any(batches > 1 for _, _, _, batches in measured) and any(batches == 1 for _, _, _, batches in measured)
    for config, amp, passed, batches in measured:
        key = (config.channels_last, config.fold_bn, amp, config.batch_size)
        assert passed == batches + (key not in warmed and batches == 1), (config, amp)
        warmed.add(key)
    folded = [c for c, amp, _, _ in measured if c.fold_bn and not c.channels_last and not amp]
    assert len(folded) == timing_search.ROUNDS          # the checking pass, then one more round
    chosen_layout = configuration.ComputeConfig(channels_last=True, batch_size=configuration.PLAIN.batch_size,
                                                 fold_bn=True)
    fp32 = [c for c, amp, _, _ in measured if not amp]
    assert fp32.count(chosen_layout) == timing_search.ROUNDS + 1   # the layout step's rounds, the second round after
    assert [amp for _, amp, _, _ in measured].count(True) == 1


def digits_search(checkpoints):
    """A Search over the cnn_bn checkpoint on a quarter of the digits, nothing given."""
    net = loading.load('digits', 'cnn_bn', checkpoints['cnn_bn'])
    data = datasets.load_dataset('digits', None, data_split=4, split_idx=1)
    settings = run_setup.RunSettings.from_args(plot_surface.get_args_parser().parse_args([*DATA, '--x=-1:1:2']))
    the_objective = objective.ClassificationObjective('crossentropy')
    return timing_search.Search(settings, net, the_objective, batch_sources.CachedBatches(data, 64, 'cpu'), 'cpu', {})


def test_the_clock_of_a_models_first_pass_starts_after_its_first_batch(checkpoints, monkeypatch):
    """The first batch of a model at a batch size creates its kernels and maps its memory: a pass
    over the probe times the later batches only, per sample, so a slow first call does not count
    against it."""
    search = digits_search(checkpoints)
    the_objective = search.objective
    clock, calls = iter(range(1000)), []
    real = the_objective.sums

    def first_call_slow(model, batch, amp=False):
        calls.append(objective.first_tensor(batch).shape[0])
        return real(model, batch, amp)
    monkeypatch.setattr(the_objective, 'sums', first_call_slow)
    monkeypatch.setattr(timing_search.time, 'perf_counter', lambda: float(next(clock)))
    config = configuration.ComputeConfig(batch_size=64)
    batches = search.probe.num_batches(config)
    assert batches > 1
    seconds, loss = search.measure(config)
    # perf_counter is read once after the first batch and once at the end: one tick over the rest
    assert seconds == pytest.approx(1.0 / (search.probe.num_samples - calls[0]))
    assert len(calls) == batches
    again, loss_again = search.measure(config)
    assert loss_again == loss and again == pytest.approx(1.0 / search.probe.num_samples)
    assert len(calls) == 2 * batches
    # Another batch size of the warmed model makes kernels of another shape: its first batch is left out too.
    smaller = configuration.ComputeConfig(batch_size=32)
    before = len(calls)
    seconds, _ = search.measure(smaller)
    assert seconds == pytest.approx(1.0 / (search.probe.num_samples - calls[before]))


def test_a_pass_shorter_than_min_pass_seconds_is_repeated_until_the_clock_has_that_long(checkpoints, monkeypatch):
    """A small model's pass over the probe lasts a few milliseconds, where the clock and the
    machine's jitter chose at random: it is repeated, timed, until MIN_PASS_SECONDS have passed,
    and its seconds per sample are taken over every timed sample; the loss is the first pass's."""
    search = digits_search(checkpoints)
    config = configuration.ComputeConfig(batch_size=64)
    monkeypatch.setattr(timing_search, 'MIN_PASS_SECONDS', 0.0)
    _, loss_of_one_pass = search.measure(config)   # warms this shape up: every later batch is timed
    calls, real = [], search.objective.sums
    monkeypatch.setattr(search.objective, 'sums', lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(timing_search, 'MIN_PASS_SECONDS', 0.05)
    tick = 0.05 / 4.5   # each reading of the clock advances it: one tick per pass
    clock = iter(tick * i for i in range(1000))
    monkeypatch.setattr(timing_search.time, 'perf_counter', lambda: next(clock))
    seconds, loss = search.measure(config)
    batches, n = search.probe.num_batches(config), search.probe.num_samples
    assert len(calls) == 5 * batches                    # 1 + 4 passes: 5 ticks >= 4.5
    assert seconds == pytest.approx(5 * tick / (5 * n))
    assert loss == loss_of_one_pass


@pytest.mark.parametrize('other_seconds, passes', [(1.1, [2, 2]), (2.0, [1, 1])])
def test_a_second_round_is_run_only_between_contenders(checkpoints, monkeypatch, other_seconds, passes):
    """Interleaved second passes are for configurations within CONTENDER of the fastest: when none
    is, the fastest is not passed again either (it could only be chosen again)."""
    search, counts = digits_search(checkpoints), {}
    fast, slow = configuration.ComputeConfig(batch_size=64), configuration.ComputeConfig(batch_size=32)

    def fake(config):
        counts[config] = counts.get(config, 0) + 1
        return (1.0 if config == fast else other_seconds), 0.5
    monkeypatch.setattr(search, 'measure', fake)
    results = search.compare([fast, slow])
    assert [counts[fast], counts[slow]] == passes
    assert results[fast] == (1.0, 0.5) and results[slow] == (other_seconds, 0.5)


def test_the_first_check_of_the_objective_takes_a_few_samples(tmp_path, checkpoints, capsys, counted_sums):
    """The check before anything is timed needs no whole batch (a built-in data set batches any size)."""
    run(capsys, '--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID,
        '--compute_config', 'plain', '--surf_file', tmp_path / 's.h5')
    assert counted_sums[0] == run_setup.CHECK_SAMPLES
    assert counted_sums[1] == configuration.PLAIN.batch_size     # then the points, in whole batches


def test_short_runs_are_not_timed_under_auto(tmp_path, checkpoints, capsys, timings):
    out = run(capsys, '--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID,
              '--surf_file', tmp_path / 's.h5')
    assert timings == [configuration.PLAIN]    # timed once, for the estimate of the run's time
    assert record(tmp_path / 's.h5')['surface'] == {'channels_last': False, 'batch_size': 128, 'fold_bn': False,
                                                    'how': 'plain'}
    assert 'too short to pay for timing' in out


def test_a_file_from_before_the_record_resumes_with_its_recorded_flags(tmp_path, checkpoints, capsys, timings):
    """A surface file without the record (written before it existed): its 'args' say how it was computed."""
    common = ['--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID]
    run(capsys, *common, '--batch_size', '32', '--channels_last', '--surf_file', tmp_path / 'full.h5')
    partial_copy(tmp_path / 'full.h5', tmp_path / 'old.h5', np.s_[1, :])
    with h5py.File(tmp_path / 'old.h5', 'r+') as f:
        del f.attrs[hdf5_layout.COMPUTE_ATTR]
    timings.clear()
    out = run(capsys, *common, '--compute_config', 'search', '--surf_file', tmp_path / 'old.h5')
    assert timings == [] and 'by its recorded flags' in out
    assert record(tmp_path / 'old.h5')['surface'] == {'channels_last': True, 'batch_size': 32, 'fold_bn': False,
                                                      'how': 'reused'}
    np.testing.assert_array_equal(losses(tmp_path / 'old.h5'), losses(tmp_path / 'full.h5'))
    # Its flags are its record: another batch size is refused. The original code's files record
    # nothing, so there the flags given decide.
    partial_copy(tmp_path / 'full.h5', tmp_path / 'older.h5', np.s_[1, :])
    with h5py.File(tmp_path / 'older.h5', 'r+') as f:
        del f.attrs[hdf5_layout.COMPUTE_ATTR]
    code, err = call_main(plot_surface.main, [*DATA, *common, '--batch_size', '64', '--surf_file', tmp_path / 'older.h5'],
                          capsys)
    assert_one_line_error(code, err, ['--batch_size 32;', '--batch_size 64 would'])
    with h5py.File(tmp_path / 'older.h5', 'r+') as f:
        del f.attrs[hdf5_layout.ARGS_ATTR]
    run(capsys, *common, '--batch_size', '64', '--surf_file', tmp_path / 'older.h5')
    assert record(tmp_path / 'older.h5')['surface'] == {'channels_last': False, 'batch_size': 64, 'fold_bn': False,
                                                        'how': 'reused'}


@pytest.mark.parametrize('first, then', [([], ['--amp']), (['--amp'], [])], ids=['float32 file', 'bf16 file'])
def test_bf16_and_float32_values_are_never_mixed_in_one_file(tmp_path, checkpoints, capsys, first, then):
    """--amp moves the loss by about 1e-3: a file begun with it is refused without it, and the other
    way round, and the compute line says when the values are bf16."""
    common = ['--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID,
              '--compute_config', 'plain']
    full, part = tmp_path / 'full.h5', tmp_path / 'part.h5'
    out = run(capsys, *common, *first, '--surf_file', full)
    assert ('compute: batch 128, bf16 autocast (--amp) (' in out) == bool(first)
    partial_copy(full, part, np.s_[1, :])
    before = snapshot(tmp_path)
    code, err = call_main(plot_surface.main, [*DATA, *common, *then, '--surf_file', part], capsys)
    assert_one_line_error(code, err, [str(part), f'amp={bool(first)}'])
    assert snapshot(tmp_path) == before
    run(capsys, *common, *first, '--surf_file', part)   # as it was begun: it ends as the uninterrupted run
    np.testing.assert_array_equal(losses(part), losses(full))


def test_a_non_root_rank_takes_rank_0s_choice_without_timing(monkeypatch):
    """Under MPI rank 0 decides and broadcasts; the other ranks never time (their comm.root_only
    returns rank 0's result)."""
    class Rank1(SerialComm):
        rank = 1

        def root_only(self, fn):
            return {**FORCED}, 'compute: rank 0\'s line', {'surface': {**FORCED, 'how': 'search'}}
    monkeypatch.setattr(choosing, '_decide', lambda *a, **k: pytest.fail('rank 1 decided'))
    settings = plot_surface_settings([])
    choice = choosing.choose(settings, Rank1(), configuration.SURFACE, '', None, None, None, None, 'cpu', 12)
    assert choice.config == configuration.ComputeConfig(**FORCED)
    assert choice.record == {'surface': {**FORCED, 'how': 'search'}}


def plot_surface_settings(argv):
    from losslandscape.engine.run_setup import RunSettings
    return RunSettings.from_args(plot_surface.get_args_parser().parse_args(['--model_file', 'm.t7', *argv]))


@pytest.mark.skipif(not os.path.exists(MPIEXEC), reason='mpiexec (pip package mpich) is not installed')
def test_two_ranks_use_rank_0s_choice(tmp_path, checkpoints):
    """Both ranks compute with the configuration rank 0 timed and recorded: the surface equals a
    serial run given that configuration, bit for bit."""
    model = tmp_path / 'model.t7'
    shutil.copy(checkpoints['cnn_bn'], model)
    common = ['--dataset', 'digits', '--model', 'cnn_bn', '--model_file', model, '--x=-1:1:5', '--y=-1:0.5:4',
              '--xnorm', 'filter', '--ynorm', 'filter', '--data_split', '3', '--threads', '1']
    parallel = run_script('plot_surface.py', *common, '--mpi', '--compute_config', 'search', '--surf_file',
                          tmp_path / 'mpi.h5', launcher=(MPIEXEC, '-n', '2'))
    assert parallel.returncode == 0, parallel.stderr
    assert parallel.stdout.count('compute: ') == 1        # rank 0 says it once
    chosen = record(tmp_path / 'mpi.h5')['surface']
    flags = ['--batch_size', chosen['batch_size'], '--fold_bn' if chosen['fold_bn'] else '--no-fold_bn',
             '--channels_last' if chosen['channels_last'] else '--no-channels_last']
    serial = run_script('plot_surface.py', *common, *flags, '--surf_file', tmp_path / 'serial.h5')
    assert serial.returncode == 0, serial.stderr
    np.testing.assert_array_equal(losses(tmp_path / 'mpi.h5'), losses(tmp_path / 'serial.h5'))


def test_python_api_takes_the_compute_flags(tmp_path, checkpoints, capsys):
    import torch
    net = train_briefly('cnn_bn', 0)
    data = datasets.load_dataset('digits', '', True, False, 4, 1)
    dataset = torch.utils.data.TensorDataset(data.normalize(data.inputs), data.targets)
    plain = losslandscape.surface(net, dataset, x='-1:1:3', xnorm='filter', threads=1, compute_config='plain',
                              surf_file=str(tmp_path / 'plain.h5'))
    given = losslandscape.surface(net, dataset, x='-1:1:3', xnorm='filter', threads=1, channels_last=True, fold_bn=True,
                              batch_size=32, surf_file=str(tmp_path / 'given.h5'))
    assert record(tmp_path / 'given.h5')['surface'] == {**FORCED, 'how': 'given'}
    assert given.values['train_loss'].shape == plain.values['train_loss'].shape


@pytest.mark.parametrize('argv,words', [
    (['--compute_config', 'fast'], ['--compute_config', 'invalid choice']),
    (['--batch_size', '0'], ['--batch_size', 'at least 1']),
    (['--channels_last=yes'], ['--channels_last', 'ignored explicit argument']),
    (['--fold_bn', '--points_per_call', '2'], ['--points_per_call', '--fold_bn']),
], ids=['unknown mode', 'batch size zero', 'channels_last with a value', 'fold_bn with points_per_call'])
def test_bad_compute_flags_are_refused(tmp_path, checkpoints, capsys, argv, words):
    model = local_copy(tmp_path, checkpoints['cnn_bn'])
    before = snapshot(tmp_path)
    code, err = call_main(plot_surface.main, [*DATA, '--model', 'cnn_bn', '--model_file', model, '--x=-1:1:3', *argv],
                          capsys)
    assert_one_line_error(code, err, words)
    assert snapshot(tmp_path) == before


def test_glibc_keeps_freed_memory_unless_the_user_tunes_malloc(monkeypatch):
    import platform
    for variable in runtime.MALLOC_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    if not (sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'):
        assert runtime.keep_freed_memory() is False
        return
    assert runtime.keep_freed_memory() is True
    monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '0')
    assert runtime.keep_freed_memory() is False


def test_amp_without_bf16_instructions_warns(tmp_path, checkpoints, capsys, monkeypatch):
    monkeypatch.setattr(runtime, 'native_bf16', lambda device: False)
    from losslandscape.cli.parsing import run_main
    model = local_copy(tmp_path, checkpoints['cnn_bn'])
    code = run_main(plot_surface.main, [*DATA, '--model', 'cnn_bn', '--model_file', model, '--x=-1:1:3', '--amp',
                                        '--surf_file', str(tmp_path / 's.h5')]) or 0
    assert code == 0 and 'warning: --amp: this CPU has no bfloat16 instructions' in capsys.readouterr().err


# ----------------------------------------------------------------------------- the Hessian scripts

EIGEN = ['--dataset', 'digits', '--data_split', '8', '--threads', '1', '--model', 'mlp', '--x=-1:1:3',
         '--xnorm', 'filter', '--eig_tol', '1e-6', '--eig_maxiter', '1000']


def run_eigen(capsys, *argv):
    return run(capsys, *argv, script=plot_hessian_eigen, common=EIGEN)


def timings_favouring_batch_64(monkeypatch, search_class):
    """``search_class``.measure with its real results but fake times favouring batch 64; returns
    the batch sizes measured."""
    real, measured = search_class.measure, []

    def fake(self, batch_size):
        seconds, result = real(self, batch_size)
        measured.append(batch_size)
        return (0.5 if batch_size == 64 else 1.0), result
    monkeypatch.setattr(search_class, 'measure', fake)
    return measured


@pytest.fixture
def product_timings(monkeypatch):
    """HessianSearch, its products timed as favouring batch 64: the batch sizes measured."""
    return timings_favouring_batch_64(monkeypatch, timing_search.HessianSearch)


@pytest.mark.parametrize('measurement_seconds, timed', [(0.05, True), (0.5, False)])
def test_auto_weighs_the_hessian_timing_by_what_its_measurements_take(checkpoints, monkeypatch,
                                                                      measurement_seconds, timed):
    """A measurement takes two products and models a point's PRODUCTS_PER_POINT: under auto the
    timing's cost is that of the measurements, so a run of 12 s is timed when its measurements take
    0.05 s each, although the units they model would cost as long as the run, and is not when they
    take 0.5 s (then only the estimate's two measurements are made)."""
    net = loading.load('digits', 'mlp', checkpoints['mlp'])
    data = batch_sources.CachedBatches(datasets.load_dataset('digits', None, data_split=4, split_idx=1), 128, 'cpu')
    search = timing_search.HessianSearch(net, objective.ClassificationObjective('crossentropy'), data, 'cpu',
                                          hessian.hessian_parameters(net))
    now, sizes = [0.0], []

    def measured(batch_size):
        sizes.append(batch_size)
        now[0] += measurement_seconds
        return 1.0 / search.probe.num_samples, np.ones(3)   # a modelled unit: 1 s over the probe samples
    monkeypatch.setattr(timing_search.time, 'perf_counter', lambda: now[0])
    monkeypatch.setattr(search, 'measure', measured)
    units = 12.0 * search.probe.num_samples / search.train_samples
    assert timing_search.ROUNDS * len(search.batch_sizes) * 1.0 > timing_search.SEARCH_SHARE * 12.0
    _, how, why = search.run(False, units)
    assert (how == 'search') == timed, why
    assert timed or ('too short' in why and len(sizes) == 2)


def eigen_values(path):
    return hdf5_layout.read_surface(str(path)).values[hdf5_layout.MAX_EIG]


def test_the_hessian_batch_size_is_timed_by_products_recorded_and_reused(tmp_path, checkpoints, capsys,
                                                                         product_timings):
    model = local_copy(tmp_path, checkpoints['mlp'])
    out = run_eigen(capsys, '--model_file', model, '--compute_config', 'search', '--surf_file', tmp_path / 'h.h5')
    assert 'compute: batch 64 (' in out and 'probe samples' in out
    assert record(tmp_path / 'h.h5') == {'hessian': {'channels_last': False, 'batch_size': 64, 'fold_bn': False,
                                                     'how': 'search'}}
    assert {64, 128} <= set(product_timings) and max(product_timings) > 128    # every batch size, the data's too
    shutil.copy(tmp_path / 'h.h5', tmp_path / 'resumed.h5')
    with h5py.File(tmp_path / 'resumed.h5', 'r+') as f:
        for name in (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG, hdf5_layout.HVP_COUNT):
            f[f'done/{name}'][1:] = False
            f[name][1:] = np.nan
    product_timings.clear()
    out = run_eigen(capsys, '--model_file', model, '--compute_config', 'search', '--surf_file', tmp_path / 'resumed.h5')
    assert product_timings == [] and 'compute: batch 64 (reused from' in out
    np.testing.assert_array_equal(eigen_values(tmp_path / 'resumed.h5'), eigen_values(tmp_path / 'h.h5'))
    # A surface of the same file keeps its own record beside the Hessian's.
    assert set(record(tmp_path / 'resumed.h5')) == {'hessian'}


def test_the_timed_hessian_batch_size_keeps_the_eigenvalues(tmp_path, checkpoints, capsys):
    """Real timings: whichever batch size wins, the eigenvalues are the plain configuration's to the
    solver's tolerance; a short run under auto is not timed at all."""
    model = local_copy(tmp_path, checkpoints['mlp'])
    out = run_eigen(capsys, '--model_file', model, '--surf_file', tmp_path / 'auto.h5')
    assert 'too short to pay for timing' in out
    run_eigen(capsys, '--model_file', model, '--compute_config', 'search', '--surf_file', tmp_path / 'timed.h5')
    assert record(tmp_path / 'auto.h5')['hessian'] == {'channels_last': False, 'batch_size': 128, 'fold_bn': False,
                                                       'how': 'plain'}
    assert record(tmp_path / 'timed.h5')['hessian']['how'] == 'search'
    np.testing.assert_allclose(eigen_values(tmp_path / 'timed.h5'), eigen_values(tmp_path / 'auto.h5'), rtol=1e-4)


def test_an_explicit_batch_size_is_not_timed_for_the_hessian(tmp_path, checkpoints, capsys, product_timings):
    model = local_copy(tmp_path, checkpoints['mlp'])
    out = run_eigen(capsys, '--model_file', model, '--compute_config', 'search', '--batch_size', '32',
                    '--surf_file', tmp_path / 'h.h5')
    assert product_timings == [] and '--batch_size 32 given' in out
    assert record(tmp_path / 'h.h5')['hessian']['batch_size'] == 32


SPECTRUM = ['--dataset', 'digits', '--data_split', '4', '--threads', '1', '--model', 'mlp', '--top_k', '2',
            '--eig_tol', '1e-8']


def test_hessian_spectrum_times_its_batch_size_unless_given(tmp_path, checkpoints, capsys, product_timings):
    model = local_copy(tmp_path, checkpoints['mlp'])
    out = run(capsys, '--model_file', model, '--compute_config', 'search', '--spectrum_file', tmp_path / 'timed.h5',
              script=hessian_spectrum, common=SPECTRUM)
    assert 'compute: batch 64 (' in out and {64, 128} <= set(product_timings)
    product_timings.clear()
    out = run(capsys, '--model_file', model, '--batch_size', '128', '--spectrum_file', tmp_path / 'given.h5',
              script=hessian_spectrum, common=SPECTRUM)
    assert product_timings == [] and 'compute:' not in out
    timed, given = (hdf5_layout.read_spectrum_file(str(tmp_path / name))[0] for name in ('timed.h5', 'given.h5'))
    np.testing.assert_allclose(timed['eigenvalues'], given['eigenvalues'], rtol=1e-5)
    out = run(capsys, '--model_file', model, '--spectrum_file', tmp_path / 'auto.h5', script=hessian_spectrum,
              common=SPECTRUM)
    assert 'compute: batch 64 (timed on this machine' in out and product_timings == []   # the search's, cached
    out = run(capsys, '--model_file', model, '--top_k', '1', '--spectrum_file', tmp_path / 'short.h5',
              script=hessian_spectrum, common=SPECTRUM)
    # Another key, timed anew: the fake times make the run long, and its real measurements are cheap.
    assert 'compute: batch 64 (' in out and 'probe samples' in out and 64 in product_timings


SHARPNESS = ['--dataset', 'digits', '--data_split', '4', '--threads', '1', '--model', 'mlp', '--rho', '0.05',
             '--ascent_steps', '2', '--restarts', '0', '--samples', '4', '--skip_eigen_start']


@pytest.fixture
def gradient_timings(monkeypatch):
    """GradientSearch, its gradients timed as favouring batch 64: the batch sizes measured."""
    return timings_favouring_batch_64(monkeypatch, timing_search.GradientSearch)


def test_sharpness_times_its_batch_size_by_gradients_unless_given(tmp_path, checkpoints, capsys, gradient_timings,
                                                                  product_timings):
    """sharpness.py's work is gradients over the data: their batch size is timed by whole gradients
    (not Hessian-vector products), kept in the timing cache for the next run, and changes only
    rounding; --batch_size skips the timing, --compute_config plain takes 128."""
    model = local_copy(tmp_path, checkpoints['mlp'])
    out = run(capsys, '--model_file', model, '--compute_config', 'search', '--sharpness_file', tmp_path / 'timed.h5',
              script=sharpness, common=SHARPNESS)
    assert 'compute: batch 64 (' in out and 'the gradients of batch 128' in out
    assert {64, 128} <= set(gradient_timings) and product_timings == []
    gradient_timings.clear()
    out = run(capsys, '--model_file', model, '--sharpness_file', tmp_path / 'cached.h5', script=sharpness,
              common=SHARPNESS)
    assert 'compute: batch 64 (timed on this machine' in out and gradient_timings == []
    out = run(capsys, '--model_file', model, '--batch_size', '128', '--sharpness_file', tmp_path / 'given.h5',
              script=sharpness, common=SHARPNESS)
    assert gradient_timings == [] and 'compute:' not in out
    out = run(capsys, '--model_file', model, '--compute_config', 'plain', '--sharpness_file', tmp_path / 'plain.h5',
              script=sharpness, common=SHARPNESS)
    assert 'compute: batch 128 (--compute_config plain)' in out and gradient_timings == []
    timed, given = (hdf5_layout.read_sharpness_file(str(tmp_path / name))[0] for name in ('timed.h5', 'given.h5'))
    for key in ('loss', 'worst_case', 'sam_one_step', 'adaptive', 'average'):
        np.testing.assert_allclose(timed[key], given[key], rtol=1e-4, atol=1e-7)


def test_the_estimated_gradients_count_what_sharpness_measures_evaluates(tmp_path, checkpoints, capsys,
                                                                         monkeypatch):
    """The estimate the auto rule weighs against the timing is the passes the run then makes."""
    from losslandscape.curvature import sharpness_measures
    passes = []
    real_value, real_gradient = sharpness_measures.PerturbedLoss.value, sharpness_measures.PerturbedLoss.value_and_gradient
    monkeypatch.setattr(sharpness_measures.PerturbedLoss, 'value',
                        lambda self, e: passes.append(sharpness.FORWARD_GRADIENTS) or real_value(self, e))
    monkeypatch.setattr(sharpness_measures.PerturbedLoss, 'value_and_gradient',
                        lambda self, e: passes.append(1) or real_gradient(self, e))
    argv = [*SHARPNESS, '--model_file', local_copy(tmp_path, checkpoints['mlp']), '--rho', '0.05', '0.1',
            '--restarts', '1', '--batch_size', '128', '--sharpness_file', str(tmp_path / 's.h5')]
    run(capsys, *argv, script=sharpness, common=[])
    assert sharpness.estimated_gradients(sharpness.get_args_parser().parse_args(argv)) == pytest.approx(sum(passes))


# ----------------------------------------------------------------------------- the machine's timing cache

def test_a_timed_choice_serves_the_next_run_of_the_model_on_this_machine(tmp_path, checkpoints, capsys, timings):
    """A search's choice is kept in the timing cache: a later run of the same model and data under
    auto takes it without timing (the values those of the timed run, bit for bit); search times
    again; a run whose key differs (a part given) finds nothing."""
    common = ['--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID]
    run(capsys, *common, '--compute_config', 'search', '--surf_file', tmp_path / 'timed.h5')
    assert timings
    timings.clear()
    out = run(capsys, *common, '--surf_file', tmp_path / 'later.h5')
    assert timings == []
    assert 'compute: channels_last, batch 32, BatchNorm folded (timed on this machine on ' in out
    assert os.environ['LANDSCAPE_CACHE_DIR'] in out and '--compute_config search times it again' in out
    assert record(tmp_path / 'later.h5') == {'surface': {**FORCED, 'how': 'cached'}}
    np.testing.assert_array_equal(losses(tmp_path / 'later.h5'), losses(tmp_path / 'timed.h5'))
    run(capsys, *common, '--compute_config', 'search', '--surf_file', tmp_path / 'again.h5')
    assert timings and record(tmp_path / 'again.h5')['surface']['how'] == 'search'
    timings.clear()
    # Another key: found nothing, so the short run under auto times its plain configuration only
    # (its estimate) and takes it.
    run(capsys, *common, '--batch_size', '64', '--surf_file', tmp_path / 'given.h5')
    assert timings == [configuration.ComputeConfig(batch_size=64)]
    assert record(tmp_path / 'given.h5')['surface']['how'] == 'plain'


def test_another_model_or_amp_is_another_entry(tmp_path, checkpoints, capsys, timings):
    common = [*GRID, '--compute_config', 'search']
    run(capsys, '--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *common,
        '--surf_file', tmp_path / 'cnn.h5')
    timings.clear()
    run(capsys, '--model', 'mlp', '--model_file', local_copy(tmp_path, checkpoints['mlp']), *GRID,
        '--surf_file', tmp_path / 'mlp.h5')
    assert record(tmp_path / 'mlp.h5')['surface']['how'] == 'plain'
    # The same parts free and the same data, another architecture (no BatchNorm): another entry ...
    cnn = tmp_path / 'cnn_plain.t7'
    torch.save({'state_dict': train_briefly('cnn', 0, steps=2).state_dict()}, cnn)
    run(capsys, '--model', 'cnn', '--model_file', cnn, *GRID, '--surf_file', tmp_path / 'no_bn.h5')
    assert record(tmp_path / 'no_bn.h5')['surface']['how'] == 'plain'
    # ... while other weights of the same architecture find the timed entry.
    run(capsys, '--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn_b']), *GRID,
        '--surf_file', tmp_path / 'other_weights.h5')
    assert record(tmp_path / 'other_weights.h5')['surface']['how'] == 'cached'
    run(capsys, '--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID, '--amp',
        '--surf_file', tmp_path / 'amp.h5')
    assert record(tmp_path / 'amp.h5')['surface']['how'] == 'plain'


@pytest.mark.parametrize('damage', ['garbage', 'not a folder', 'off'])
def test_a_broken_or_disabled_cache_never_stops_a_run(tmp_path, checkpoints, capsys, timings, monkeypatch, damage):
    """A cache file that is not JSON is ignored (and replaced by the next search); a cache folder that
    cannot be made, or LANDSCAPE_CACHE_DIR set empty, leaves runs uncached but running."""
    folder = tmp_path / 'cache'
    if damage == 'garbage':
        folder.mkdir()
        (folder / 'compute_configs.json').write_text('{"truncated": ')
    elif damage == 'not a folder':
        (tmp_path / 'file').write_text('x')
        folder = tmp_path / 'file' / 'cache'      # under a regular file: not even root can make it
    monkeypatch.setenv('LANDSCAPE_CACHE_DIR', '' if damage == 'off' else str(folder))
    common = ['--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), *GRID]
    code, err = call_main(plot_surface.main, [*DATA, *common, '--compute_config', 'search', '--surf_file',
                                              tmp_path / 'timed.h5'], capsys)
    assert code == 0, err
    # A cache that cannot be written is said (each run would time again), one turned off is not.
    assert ('warning: could not write the timing cache' in err) == (damage == 'not a folder'), err
    run(capsys, *common, '--surf_file', tmp_path / 'later.h5')
    how = record(tmp_path / 'later.h5')['surface']['how']
    assert how == ('cached' if damage == 'garbage' else 'plain')


def test_the_cache_keeps_the_newest_entries_and_keys_what_the_timing_depends_on(monkeypatch):
    from losslandscape.compute import timing_cache
    monkeypatch.setattr(timing_cache, 'MAX_ENTRIES', 3)
    keys = [timing_cache.make_key(model='m', amp=amp, batch_sizes=sizes) for amp in (False, True)
            for sizes in ([32, 64], [32])]
    assert len(set(keys)) == 4
    for number, key in enumerate(keys):
        assert timing_cache.store(key, {'number': number})
    assert timing_cache.lookup(keys[0]) is None
    assert [timing_cache.lookup(k)['number'] for k in keys[1:]] == [1, 2, 3]
    assert timing_cache.store(keys[1], {'number': 4})           # stored again: the newest now
    assert timing_cache.store(timing_cache.make_key(model='n'), {'number': 5})
    assert timing_cache.lookup(keys[2]) is None and timing_cache.lookup(keys[1])['number'] == 4
    cpu = timing_cache.device_identity('cpu')
    assert cpu['isa'] and cpu['threads'] >= 1


def test_the_hessian_batch_size_is_cached_apart_from_the_surface(tmp_path, checkpoints, capsys, product_timings):
    model = local_copy(tmp_path, checkpoints['mlp'])
    run_eigen(capsys, '--model_file', model, '--compute_config', 'search', '--surf_file', tmp_path / 'timed.h5')
    product_timings.clear()
    out = run_eigen(capsys, '--model_file', model, '--surf_file', tmp_path / 'later.h5')
    assert product_timings == [] and 'compute: batch 64 (timed on this machine on ' in out
    assert record(tmp_path / 'later.h5')['hessian']['how'] == 'cached'
    np.testing.assert_array_equal(eigen_values(tmp_path / 'later.h5'), eigen_values(tmp_path / 'timed.h5'))
