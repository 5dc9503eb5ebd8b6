"""Diverged points mean one thing on every CPU: a sample whose outputs are not all finite has no
prediction, so the accuracy of a point with any such sample is NaN; the loss is whatever it is
(inf or NaN); the summary flags both. Tested with models that force each case (fixtures/
forced_outputs.py), serially and with --points_per_call."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losslandscape import plot_surface
from losslandscape._testing.fake_cifar10 import write_fake_cifar10
from losslandscape.cli.parsing import run_main
from losslandscape.data import datasets
from losslandscape.directions import normalization, subsets
from losslandscape.io import hdf5_layout
from losslandscape.models.cifar10.zoo import build
from losslandscape.training.evaluation import accuracy_percent, prediction_counts
from tests.fixtures import forced_outputs
from tests.test_bn_folding import randomize_statistics

CASES = list(forced_outputs.REPLACEMENTS)


@pytest.mark.parametrize('outputs,correct,undefined', [
    ([[1.0, 2.0], [3.0, 0.0]], 2, 0),
    ([[math.inf, 0.0], [3.0, 0.0]], 1, 1),            # +inf in one class: argmax would say class 0
    ([[-math.inf, 1.0], [3.0, 0.0]], 1, 1),           # -inf: the argmax (1) is still no prediction
    ([[math.nan, 1.0], [0.0, 3.0]], 0, 1),
    ([[math.inf, math.inf], [math.nan, -math.inf]], 0, 2),
])
def test_a_sample_with_any_non_finite_output_has_no_prediction(outputs, correct, undefined):
    hits, misses = prediction_counts(torch.tensor(outputs), torch.tensor([1, 0]))
    assert (int(hits), int(misses)) == (correct, undefined)
    assert math.isnan(accuracy_percent(int(hits), int(misses), 2)) == (undefined > 0)


def expected_values(case, trigger):
    """Mean cross-entropy and accuracy of the forced model over the digits training set, computed
    here in float64 from the logits directly (one batch of everything: the fixture's rows are
    chosen by index within a batch, so the batch size is the suite's, 128)."""
    net = forced_outputs.ForcedOutputs(case).eval()
    with torch.no_grad():
        net.trigger.fill_(trigger)
        data = datasets.load_digits(train=True)
        losses, defined, hits = [], [], []
        for inputs, targets in data.batches(128):
            logits = net(inputs).double()
            losses.append(F.cross_entropy(logits, targets, reduction='none'))
            finite = torch.isfinite(logits).all(dim=1)
            defined.append(finite)
            hits.append((logits.argmax(dim=1) == targets) & finite)
    loss = torch.cat(losses).mean().item()
    acc = 100.0 * torch.cat(hits).double().mean().item() if torch.cat(defined).all() else math.nan
    return loss, acc


@pytest.fixture
def forced_run(tmp_path):
    def make(case):
        net = forced_outputs.ForcedOutputs(case)
        model = tmp_path / f'{case}.t7'
        torch.save({'state_dict': net.state_dict()}, model)
        # A direction that moves trigger alone: x = 0 is the model as saved, x >= 0.75 is forced.
        direction = [np.zeros(tuple(p.shape), np.float32) for p in net.parameters()]
        names = [name for name, _ in net.named_parameters()]
        direction[names.index('trigger')][:] = 1.0
        dir_file = tmp_path / f'{case}_dir.h5'
        hdf5_layout.write_direction_file(str(dir_file), direction)
        return model, dir_file
    return make


@pytest.mark.parametrize('points_per_call', [1, 3])
@pytest.mark.parametrize('case', CASES)
def test_forced_divergence_is_stored_and_flagged(tmp_path, forced_run, capsys, case, points_per_call):
    model, dir_file = forced_run(case)
    surf = tmp_path / 's.h5'
    argv = ['--dataset', 'digits', '--model', f'tests.fixtures.forced_outputs:{case}', '--model_file', model,
            '--dir_file', dir_file, '--x=0:1.5:3', '--surf_file', surf, '--threads', '1',
            '--points_per_call', points_per_call]
    assert run_main(plot_surface.main, [str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    s = hdf5_layout.read_surface(str(surf))
    assert s.done['train_loss'].all() and s.done['train_acc'].all()
    for k, x in enumerate((0.0, 0.75, 1.5)):
        loss, acc = expected_values(case, x)
        np.testing.assert_allclose(s.values['train_loss'][k], loss, rtol=1e-5)
        if math.isnan(acc):
            assert math.isnan(s.values['train_acc'][k]), (case, x)
        else:
            np.testing.assert_allclose(s.values['train_acc'][k], acc, rtol=1e-9)
    assert np.isfinite(s.values['train_acc'][0]) and np.isnan(s.values['train_acc'][1:]).all()
    # The summary counts every stored inf/NaN value, per surface.
    bad_losses = int((~np.isfinite(s.values['train_loss'])).sum())
    flagged = f'train_loss: {bad_losses}, train_acc: 2' if bad_losses else 'train_acc: 2'
    assert 'diverged' in out and flagged in out, out


# ----------------------------------------------------------------------------- overflow inside the network
#
# resnet20 with perturbed BatchNorm statistics on CIFAR-shaped images: along x the weights grow
# 5000-10000-fold, the activations overflow to inf and the next convolution meets inf - inf, so
# the point diverges (NaN); along y, and at the centre, nothing does. Every configuration the
# suite can choose or be given must store NaN exactly where the plain one does, and otherwise
# values within its tolerance of plain's.
OVERFLOW_GRID = ['--x=-1e4:1e4:5', '--y=-1:1:3']


@pytest.fixture(scope='module')
def overflowing_resnet(tmp_path_factory):
    """(flags naming the data, model and directions, the plain configuration's surface)."""
    folder = tmp_path_factory.mktemp('overflow')
    write_fake_cifar10(str(folder / 'data'), num_train=64, num_test=8)
    torch.manual_seed(0)
    net = randomize_statistics(build('resnet20'))
    torch.save({'state_dict': net.state_dict()}, folder / 'resnet20.t7')
    # Filter-normalized, BatchNorm and biases left alone: the paper's directions.
    base = subsets.get_base(net, 'weights')
    xdirection, ydirection = (normalization.make_random_direction(base, torch.Generator().manual_seed(seed),
                                                                  'filter', 'biasbn') for seed in (1, 2))
    hdf5_layout.write_direction_file(str(folder / 'dirs.h5'), [d.numpy() for d in xdirection],
                                     [d.numpy() for d in ydirection])
    flags = ['--dataset', 'cifar10', '--datapath', folder / 'data', '--model', 'resnet20',
             '--model_file', folder / 'resnet20.t7', '--dir_file', folder / 'dirs.h5', '--threads', '2', *OVERFLOW_GRID]
    plain = folder / 'plain.h5'
    assert run_main(plot_surface.main, [str(a) for a in (*flags, '--compute_config', 'plain', '--surf_file', plain)]) == 0
    return flags, hdf5_layout.read_surface(str(plain))


@pytest.mark.parametrize('lever', [
    [], ['--compute_config', 'search'], ['--fold_bn'], ['--channels_last'], ['--fold_bn', '--channels_last'],
    ['--fold_bn', '--channels_last', '--batch_size', '16'], ['--batch_size', '16'], ['--points_per_call', '3'],
    ['--amp'], ['--amp', '--fold_bn', '--channels_last']],
    ids=lambda lever: ' '.join(lever) or 'defaults')
def test_an_overflow_inside_the_network_diverges_under_every_configuration(tmp_path, overflowing_resnet, lever):
    flags, plain = overflowing_resnet
    loss = plain.values['train_loss']
    assert np.isnan(loss).any() and np.isfinite(loss).sum() >= 3   # the case is real: some points diverge, not all
    surf = tmp_path / 'lever.h5'
    assert run_main(plot_surface.main, [str(a) for a in (*flags, *lever, '--surf_file', surf)]) == 0
    got = hdf5_layout.read_surface(str(surf))
    rtol = 3e-2 if '--amp' in lever else 1e-5   # bfloat16 keeps ~3 significant digits
    for name in ('train_loss', 'train_acc'):
        np.testing.assert_array_equal(np.isnan(got.values[name]), np.isnan(plain.values[name]), err_msg=name)
        np.testing.assert_array_equal(np.isinf(got.values[name]), np.isinf(plain.values[name]), err_msg=name)
    finite = np.isfinite(loss)
    np.testing.assert_allclose(got.values['train_loss'][finite], loss[finite], rtol=rtol)
    np.testing.assert_allclose(got.values['train_acc'][finite], plain.values['train_acc'][finite], atol=1.6)  # a sample
