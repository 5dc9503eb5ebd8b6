"""Standard errors, the paired rise above the centre, and evaluation on a budget (--samples,
--target_stderr): each checked against an independent computation, calibrated over many subsets of
the digits, and kept across kills, MPI ranks and files written before them."""
import json
import os
import shutil
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import losslandscape
from losslandscape import figures, plot_2D, plot_surface
from losslandscape.data import batch_sources, datasets
from losslandscape.engine import sample_budget
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout
from losslandscape.models.digits import MODELS
from losslandscape.objectives import objective, standard_errors
from tests.conftest import ROOT, call_main, run_script, train_briefly
from tests.fixtures import objectives as fx
from tests.test_objectives import PKG, TOKENS, moved_parameters, points, save, surface_run, whole_dataset
from tests.test_reliability import PER_POINT_FLUSH, assert_died_by_sigkill, killed_run

DIGITS = ['--dataset', 'digits', '--threads', '1']
MPIEXEC = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
CROSSENTROPY = objective.ClassificationObjective('crossentropy')


def stderr_of_mean(values):
    """The textbook standard error of a mean: the sample standard deviation over sqrt(n)."""
    values = np.asarray(values, dtype=np.float64)
    return values.std(ddof=1) / np.sqrt(len(values))


def digits_losses(net, params, train=True):
    """(each sample's cross-entropy, each sample's 0/1 correctness) of the digits split, by plain torch."""
    data = datasets.load_digits(train=train)
    with torch.no_grad():
        outputs = functional_call(net, params, (data.normalize(data.inputs),))
    losses = F.cross_entropy(outputs, data.targets, reduction='none').double().numpy()
    return losses, (outputs.argmax(dim=1) == data.targets).double().numpy()


# ----------------------------------------------------------------------------- against independent computations

def test_full_data_standard_errors_equal_a_per_sample_computation(tmp_path, checkpoints, capsys):
    model = tmp_path / 'cnn.t7'
    shutil.copy(checkpoints['cnn_bn'], model)
    surf = tmp_path / 's.h5'
    surface_run([*DIGITS, '--model', 'cnn_bn', '--model_file', model, '--x=-1:1:3', '--xnorm', 'filter',
                 '--eval_test', '--surf_file', surf], capsys)
    s = hdf5_layout.read_surface(str(surf))
    net = MODELS['cnn_bn']()
    net.load_state_dict(torch.load(model, weights_only=True)['state_dict'])
    net.eval()
    methods = json.loads(s.attrs[hdf5_layout.STDERR_METHODS_ATTR])
    assert set(methods.values()) == {standard_errors.PER_SAMPLE} and len(methods) == 6
    for prefix, train in (('train', True), ('test', False)):
        centre, _ = digits_losses(net, moved_parameters(net, s.dir_file, 0.0, 0.0), train)
        for index, x, _ in points(s):
            losses, correct = digits_losses(net, moved_parameters(net, s.dir_file, x, 0.0), train)
            value = lambda name: s.values[f'{prefix}_{name}'][index]   # noqa: E731
            assert value('loss') == pytest.approx(losses.mean(), rel=1e-6)
            assert value('loss_stderr') == pytest.approx(stderr_of_mean(losses), rel=1e-6)
            assert value('acc_stderr') == pytest.approx(100 * stderr_of_mean(correct), rel=1e-9)
            assert value('loss_rise') == pytest.approx((losses - centre).mean(), abs=1e-7)
            assert value('loss_rise_stderr') == pytest.approx(stderr_of_mean(losses - centre), rel=1e-5, abs=1e-9)


def ratio_stderr(y, n):
    """The delta-method standard error of sum(y) / sum(n) over units (y_i, n_i), written out."""
    y, n = np.asarray(y, dtype=np.float64), np.asarray(n, dtype=np.float64)
    m, ratio = len(y), y.sum() / n.sum()
    return np.sqrt(((y - ratio * n) ** 2).sum() / ((m - 1) * m)) / n.mean()


@pytest.mark.parametrize('loss_name,factory,shift,method', [
    ('causal_lm', 'causal_model', 1, standard_errors.PER_SEQUENCE),
    ('model', 'tagger_model', 0, standard_errors.PER_SAMPLE)])
def test_model_losses_have_per_sequence_standard_errors(tmp_path, capsys, loss_name, factory, shift, method):
    """A language model's units are its sequences, weighted by their counted tokens (a ratio estimator)."""
    net = getattr(fx, factory)()
    surf = tmp_path / 's.h5'
    surface_run([*TOKENS, '--model', f'{PKG}:{factory}', '--model_file', save(net, tmp_path / 'm.t7'),
                 '--loss_name', loss_name, '--x=-1:1:3', '--batch_size', '4', '--surf_file', surf], capsys)
    s = hdf5_layout.read_surface(str(surf))
    assert json.loads(s.attrs[hdf5_layout.STDERR_METHODS_ATTR])['train_loss_stderr'] == method
    batch = whole_dataset(fx.token_data('', True))

    def sequences(x):
        logits = functional_call(net, moved_parameters(net, s.dir_file, x, 0.0), (batch['input_ids'],)).logits
        logits, labels = (logits[:, :-1], batch['labels'][:, 1:]) if shift else (logits, batch['labels'])
        token = F.cross_entropy(logits.flatten(0, 1).double(), labels.flatten(), ignore_index=-100, reduction='none')
        return token.view(labels.shape).sum(dim=1).detach().numpy(), (labels != -100).sum(dim=1).numpy()
    centre, counts = sequences(0.0)
    for index, x, _ in points(s):
        y, n = sequences(x)
        assert s.values['train_loss_stderr'][index] == pytest.approx(ratio_stderr(y, n), rel=1e-5)
        assert s.values['train_loss_rise'][index] == pytest.approx((y - centre).sum() / n.sum(), abs=1e-6)
        assert s.values['train_loss_rise_stderr'][index] == pytest.approx(ratio_stderr(y - centre, n), rel=1e-4,
                                                                          abs=1e-9)
    if loss_name == 'causal_lm':   # the delta method: d exp(L) = exp(L) dL
        np.testing.assert_allclose(s.values['train_perplexity_stderr'],
                                   np.exp(s.values['train_loss']) * s.values['train_loss_stderr'], rtol=1e-12)


@pytest.mark.parametrize('loss_fn,method', [('squared_error', standard_errors.PER_BATCH),
                                            ('squared_error_with_squares', standard_errors.PER_SAMPLE)])
def test_custom_objectives_estimate_per_sample_with_squares_else_per_batch(tmp_path, capsys, monkeypatch, loss_fn,
                                                                           method):
    monkeypatch.chdir(tmp_path)   # the untrained model's direction file is made in the working folder
    surf = tmp_path / 's.h5'
    surface_run(['--dataset', f'{PKG}:regression_data', '--model', f'{PKG}:regression_model', '--threads', '1',
                 '--loss_name', f'{PKG}:{loss_fn}', '--x=0:1:2', '--batch_size', '8', '--surf_file', surf], capsys)
    s = hdf5_layout.read_surface(str(surf))
    recorded = json.loads(s.attrs[hdf5_layout.STDERR_METHODS_ATTR])
    assert recorded['train_loss_stderr'] == recorded['train_abs_error_stderr'] == method
    assert recorded['train_loss_rise_stderr'] == standard_errors.PER_BATCH   # no per-sample values to pair
    assert 'train_loss_sq' not in s.values and 'train_abs_error_sq' not in s.values
    net, batch = fx.regression_model(), whole_dataset(fx.regression_data('', True))
    error = (net(batch['features']).squeeze(-1) - batch['target']).detach().double().numpy()
    for name, values in (('loss', error ** 2), ('abs_error', np.abs(error))):
        if method == standard_errors.PER_SAMPLE:
            expected = stderr_of_mean(values)
        else:   # the batches of 8 as units, each weighing its count
            expected = ratio_stderr([part.sum() for part in np.split(values, range(8, len(values), 8))],
                                    [len(part) for part in np.split(values, range(8, len(values), 8))])
        assert s.values[f'train_{name}_stderr'][0] == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- calibration

SEEDS, SUBSET = 200, 128


def test_intervals_of_a_subset_cover_the_full_data_value(checkpoints):
    """Over 200 seeded --samples subsets of 128 of the 1,438 digits training samples, the interval
    +-1.96 standard errors of a point's loss, and of its rise above the centre, holds the full data
    set's value 90-99 % of the time: also with the finite-population factor sqrt(1 - n / N) the
    stored error leaves out (it estimates the distribution's mean, which is farther)."""
    net = MODELS['cnn_bn']()
    net.load_state_dict(torch.load(checkpoints['cnn_bn'], weights_only=True)['state_dict'])
    net.eval()
    centre_params = {name: p.detach().clone() for name, p in net.named_parameters()}
    gen = torch.Generator().manual_seed(7)
    point_params = {}
    for name, p in centre_params.items():   # a point off the centre: a filter-normalized random step
        step = torch.randn(p.shape, generator=gen)
        point_params[name] = p + 0.4 * step * (p.norm() / step.norm())
    split = batch_sources.open_split('digits', '', True)

    def values(samples, seed=0):
        source = split.source(SUBSET, 'cpu', samples=samples, sample_seed=seed)
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(centre_params[name])
            _, centre = objective.evaluate_centre(net, source, CROSSENTROPY)
            for name, p in net.named_parameters():
                p.copy_(point_params[name])
            return objective.evaluate(net, source, CROSSENTROPY, centre=centre)

    full = values(None)
    assert full['loss_rise'] > 3 * full['loss_rise_stderr'] > 0   # a real rise, which the subsets must find
    finite_population = np.sqrt(1 - SUBSET / len(split))
    covered = {key: [] for key in ('loss', 'loss_rise')}
    covered_fpc = {key: [] for key in covered}
    for seed in range(SEEDS):
        sample = values(SUBSET, seed)
        for key in covered:
            error = abs(sample[key] - full[key])
            covered[key].append(error <= 1.96 * sample[key + '_stderr'])
            covered_fpc[key].append(error <= 1.96 * sample[key + '_stderr'] * finite_population)
    for key in covered:
        for share in (np.mean(covered[key]), np.mean(covered_fpc[key])):
            assert 0.90 <= share <= 0.99, (key, np.mean(covered[key]), np.mean(covered_fpc[key]))


# ----------------------------------------------------------------------------- evaluation on a budget

def test_target_stderr_meets_its_target_at_the_centre(tmp_path, checkpoints, capsys):
    model = tmp_path / 'cnn.t7'
    shutil.copy(checkpoints['cnn_bn'], model)
    target = 0.15   # this briefly trained CNN's losses spread widely: 1,024 of the 1,438 samples reach it
    argv = [*DIGITS, '--model', 'cnn_bn', '--model_file', model, '--x=-0.5:0.5:3', '--xnorm', 'filter',
            '--target_stderr', str(target), '--surf_file', tmp_path / 's.h5']
    out = surface_run(argv, capsys).out
    s = hdf5_layout.read_surface(str(tmp_path / 's.h5'))
    chosen = json.loads(s.attrs[hdf5_layout.SAMPLES])
    lines = [line for line in out.splitlines() if line.startswith('--target_stderr')]
    assert len(lines) == 1 and f'{chosen} of the 1438 training samples' in lines[0]
    centre = s.values['train_loss'][1], s.values['train_loss_stderr'][1]
    assert centre[1] / centre[0] <= target
    # The smallest size the doubling finds: half of it misses the target.
    assert chosen in sample_budget.candidate_sizes(1438) and chosen > sample_budget.TARGET_START
    net = MODELS['cnn_bn']()
    net.load_state_dict(torch.load(model, weights_only=True)['state_dict'])
    half = objective.evaluate(net, batch_sources.batch_source('digits', '', True, 128, 'cpu', samples=chosen // 2),
                              CROSSENTROPY)
    assert half['loss_stderr'] / half['loss'] > target
    # Resumed with the same target: the recorded size, no search, nothing computed.
    again = surface_run(argv, capsys).out
    assert '--target_stderr' not in again and '0 points computed' in again


def test_samples_from_python_and_its_keyword_errors(tmp_path):
    net = train_briefly('cnn', 0)
    data = datasets.load_digits(train=True)
    dataset = torch.utils.data.TensorDataset(data.normalize(data.inputs), data.targets)
    s = losslandscape.surface(net, dataset, x='-1:1:3', xnorm='filter', samples=200, sample_seed=4, threads=1,
                              surf_file=str(tmp_path / 's.h5'))
    assert json.loads(s.attrs[hdf5_layout.SAMPLES]) == 200 and json.loads(s.attrs[hdf5_layout.SAMPLE_SEED]) == 4
    assert np.isfinite(s.values['train_loss_rise_stderr']).all()
    for keywords, words in (({'samples': 0}, 'samples= must be at least 1'),
                            ({'samples': 5000}, 'samples=5000 is more than the 1438 samples'),
                            ({'target_stderr': 1.5}, 'target_stderr= must be in (0, 1)')):
        with pytest.raises(UsageError, match=words.replace('(', r'\(').replace(')', r'\)')):
            losslandscape.surface(net, dataset, x='-1:1:3', surf_file=str(tmp_path / 'bad.h5'), **keywords)
    assert not (tmp_path / 'bad.h5').exists()


def surface_command(model, surf, *extra):
    return [*DIGITS, '--model', 'cnn_bn', '--model_file', model, '--x=-1:1:3', '--y=-1:1:3', '--xnorm', 'filter',
            '--ynorm', 'filter', '--samples', '300', '--sample_seed', '3', '--eval_test', '--surf_file', surf, *extra]


def assert_same_surfaces(a, b):
    assert set(a.values) == set(b.values) and len(a.values) == 12
    for name in a.values:
        assert b.done[name].all(), name
        np.testing.assert_array_equal(a.values[name], b.values[name], err_msg=name)


def test_samples_runs_killed_and_resumed_or_under_mpi_equal_a_serial_run(tmp_path, checkpoints, capsys):
    model = tmp_path / 'cnn.t7'
    shutil.copy(checkpoints['cnn_bn'], model)
    surface_run(surface_command(model, tmp_path / 'ref.h5'), capsys)
    reference = hdf5_layout.read_surface(str(tmp_path / 'ref.h5'))
    assert json.loads(reference.attrs[hdf5_layout.SAMPLES]) == 300
    # Killed after 2 points reached the file; the rerun computes the rest (its own centre first).
    cmd = [sys.executable, os.path.join(ROOT, 'plot_surface.py'), *map(str, surface_command(model, tmp_path / 'k.h5'))]
    status, output = killed_run(cmd, {**PER_POINT_FLUSH, 'LANDSCAPE_KILL_AT': 'point:2'})
    assert_died_by_sigkill(status, output, mpi=False)
    assert '7 points computed' in surface_run(surface_command(model, tmp_path / 'k.h5'), capsys).out
    assert_same_surfaces(reference, hdf5_layout.read_surface(str(tmp_path / 'k.h5')))
    # A resume on another subset is refused, the file untouched.
    before = open(tmp_path / 'k.h5', 'rb').read()
    code, err = call_main(plot_surface.main, [*surface_command(model, tmp_path / 'k.h5'), '--sample_seed', '4'], capsys)
    assert code == 2 and 'sample_seed=3, not 4' in err
    assert open(tmp_path / 'k.h5', 'rb').read() == before
    if os.path.exists(MPIEXEC):
        parallel = run_script('plot_surface.py', *surface_command(model, tmp_path / 'mpi.h5'), '--mpi',
                              launcher=(MPIEXEC, '-n', '2'))
        assert parallel.returncode == 0, parallel.stderr
        assert_same_surfaces(reference, hdf5_layout.read_surface(str(tmp_path / 'mpi.h5')))


# ----------------------------------------------------------------------------- files written before them

def strip_to_an_old_file(path):
    """The file as a version before standard errors wrote it: no stderr, rise or sample records."""
    with h5py.File(path, 'r+') as f:
        for name in list(f):
            if name.endswith((hdf5_layout.STDERR_SUFFIX, hdf5_layout.RISE_SUFFIX)):
                del f[name], f[hdf5_layout.DONE_GROUP][name]
        for key in (hdf5_layout.STDERR_METHODS_ATTR, hdf5_layout.SAMPLES, hdf5_layout.SAMPLE_SEED,
                    hdf5_layout.TARGET_STDERR):
            del f.attrs[key]


def test_an_old_file_is_neither_recomputed_nor_mixed_with_a_sample(tmp_path, checkpoints, capsys):
    model = tmp_path / 'cnn.t7'
    shutil.copy(checkpoints['cnn_bn'], model)
    argv = [*DIGITS, '--model', 'cnn_bn', '--model_file', model, '--x=-1:1:3', '--xnorm', 'filter',
            '--data_split', '4', '--surf_file', tmp_path / 's.h5']
    surface_run(argv, capsys)
    strip_to_an_old_file(tmp_path / 's.h5')
    old = hdf5_layout.read_surface(str(tmp_path / 's.h5'))
    assert '0 points computed' in surface_run(argv, capsys).out
    resumed = hdf5_layout.read_surface(str(tmp_path / 's.h5'))
    np.testing.assert_array_equal(resumed.values['train_loss'], old.values['train_loss'])
    assert not resumed.done['train_loss_stderr'].any()   # the old points stay without, as they were
    code, err = call_main(plot_surface.main, [*argv, '--samples', '100'], capsys)
    assert code == 2 and 'samples=None, not 100' in err
    # Its curves draw as before: no bands.
    figure = figures.loss_curve(old)
    assert not any(ax.collections for ax in figure.axes)


# ----------------------------------------------------------------------------- figures

def test_curves_have_their_band_and_contours_say_the_rise_precision(tmp_path, checkpoints, capsys):
    model = tmp_path / 'cnn.t7'
    shutil.copy(checkpoints['cnn_bn'], model)
    common = [*DIGITS, '--model', 'cnn_bn', '--model_file', model, '--xnorm', 'filter', '--samples', '200']
    surface_run([*common, '--x=-1:1:5', '--eval_test', '--surf_file', tmp_path / 'line.h5'], capsys)
    line = hdf5_layout.read_surface(str(tmp_path / 'line.h5'))
    figure = figures.loss_curve(line)
    bands = [c for ax in figure.axes for c in ax.collections]
    assert len(bands) == 4   # train and test loss, train and test accuracy
    top = max(path.vertices[:, 1].max() for path in bands[0].get_paths())
    assert top == pytest.approx(np.max(line.values['train_loss'] + 2 * line.values['train_loss_stderr']))
    surface_run([*common, '--x=-1:1:3', '--y=-1:1:3', '--ynorm', 'filter', '--surf_file', tmp_path / 'plane.h5'],
                capsys)
    plane = hdf5_layout.read_surface(str(tmp_path / 'plane.h5'))
    largest = np.nanmax(plane.values['train_loss_rise_stderr'])
    fine = figures.contour(plane, vmin=0.01, vmax=5, vlevel=largest)
    assert f'{largest:.2g}' in fine.axes[0].get_title()
    warning = capsys.readouterr().err
    assert len(warning.splitlines()) == 1 and 'vlevel=' in warning and 'finer than twice' in warning
    figures.contour(plane, vmin=0.01, vmax=5, vlevel=3 * largest)
    assert capsys.readouterr().err == ''
    # The script says it in its flags' words, and prints the largest standard error beside the spacing.
    plot_2D.main(['--surf_file', str(tmp_path / 'plane.h5'), '--vmin', '0.01', '--vmax', f'{10 * largest:g}',
                  '--vlevel', f'{largest:.6g}'])
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1 and f'--vlevel {largest:.6g} is finer' in captured.err
    assert f'largest standard error of the rise above the centre {largest:.2g}' in captured.out
    pytest.importorskip('plotly')
    assert f'{largest:.2g}' in figures.html_viewer(plane).layout.title.text
