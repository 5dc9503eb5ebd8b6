"""hessian.py against dense Hessians, and plot_hessian_eigen.py end to end: layout, resume, MPI-free."""
import copy
import math
import os
import shutil
import sys

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from losslandscape import plot_hessian_eigen, plot_surface
from losslandscape.curvature import hessian
from losslandscape.data import batch_sources, datasets
from losslandscape.directions import moving, subsets
from losslandscape.engine import evaluators, progress
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout
from losslandscape.models import loading
from losslandscape.parallel import scheduler
from losslandscape.training import evaluation
from tests.conftest import call_main, run_script

TIGHT = dict(tol=1e-6, maxiter=1000, ncv=20)   # solve to well within the 1 % the tests ask


# ----------------------------------------------------------------------------- tiny problems

class ReferenceClassLogistic(nn.Module):
    """Multinomial logistic regression with class K-1 as the reference (its logit fixed at 0).

    Its cross-entropy Hessian is sum_n (diag(p_n) - p_n p_n^T) (x) x_n x_n^T / N over the K-1 free
    classes: each diag(p) - p p^T is positive definite (all p_k > 0 and sum_k p_k < 1, since the
    reference class has probability > 0), so v^T H v = 0 needs V x_n = 0 for every n, i.e. V = 0
    once the x_n span the input space. Provably positive definite, at every weight."""

    def __init__(self, features, classes):
        super().__init__()
        self.free = nn.Linear(features, classes - 1, bias=False)

    def forward(self, x):
        logits = self.free(x)
        return torch.cat([logits, torch.zeros_like(logits[:, :1])], dim=1)


def tiny_data(n, features, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, features, generator=gen)
    targets = torch.randint(classes, (n,), generator=gen)
    return datasets.CachedDataset(inputs, targets, classes)


def indefinite_mlp(seed):
    """A tanh MLP at large random weights on random labels: far from any minimum."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    return net.eval()


def dense_eigenvalues(net, data, loss_name='crossentropy'):
    """Eigenvalues of the dense Hessian (float64) of the mean loss w.r.t. the dim > 1 parameters."""
    net64 = copy.deepcopy(net).double()
    fixed = dict(net64.named_parameters())
    names = [name for name, p in fixed.items() if p.dim() > 1]
    shapes = [fixed[name].shape for name in names]
    flat = torch.cat([fixed[name].detach().reshape(-1) for name in names])
    inputs, targets = data.normalize(data.inputs).double(), data.targets

    def mean_loss(vector):
        params, start = dict(fixed), 0
        for name, shape in zip(names, shapes):
            size = int(np.prod(shape))
            params[name] = vector[start:start + size].view(shape)
            start += size
        outputs = torch.func.functional_call(net64, params, (inputs,))
        return evaluation.batch_loss_sum(outputs, targets, loss_name) / len(data)

    matrix = torch.autograd.functional.hessian(mean_loss, flat)
    return np.linalg.eigvalsh(matrix.numpy())


def assert_within_one_percent(estimate, exact):
    assert abs(estimate - exact) <= 0.01 * abs(exact), (estimate, exact)


# ----------------------------------------------------------------------------- the math

def test_positive_definite_hessian_matches_dense():
    torch.manual_seed(0)
    net = ReferenceClassLogistic(features=5, classes=4).eval()
    data = tiny_data(40, 5, 4, seed=1)
    exact = dense_eigenvalues(net, data)
    assert exact[0] > 0, 'the test problem must be positive definite'
    result = hessian.extreme_eigenvalues(hessian.MeanLossHessian(net, data, batch_size=16), **TIGHT)
    assert_within_one_percent(result.max_eig, exact[-1])
    assert_within_one_percent(result.min_eig, exact[0])
    assert result.min_eig > 0


@pytest.mark.parametrize('loss_name', ['crossentropy', 'mse'])
def test_indefinite_hessian_matches_dense(loss_name):
    net = indefinite_mlp(seed=3)        # crossentropy: eigenvalues about -0.35 and 0.87
    data = tiny_data(30, 6, 3, seed=2)
    exact = dense_eigenvalues(net, data, loss_name)
    assert exact[0] < 0 < exact[-1], 'the test problem must be indefinite'
    result = hessian.extreme_eigenvalues(hessian.MeanLossHessian(net, data, loss_name, batch_size=8), **TIGHT)
    assert_within_one_percent(result.max_eig, exact[-1])
    assert_within_one_percent(result.min_eig, exact[0])


def test_negative_definite_operator():
    """The shifted second solve must also find both ends when every eigenvalue is negative."""
    net = ReferenceClassLogistic(features=5, classes=4).eval()
    data = tiny_data(40, 5, 4, seed=1)
    operator = hessian.MeanLossHessian(net, data)
    flipped_hvp = operator.hvp
    operator.hvp = lambda v: -flipped_hvp(v)        # -H: negative definite
    exact = -dense_eigenvalues(net, data)[::-1]
    result = hessian.extreme_eigenvalues(operator, **TIGHT)
    assert exact[-1] < 0
    assert_within_one_percent(result.max_eig, exact[-1])
    assert_within_one_percent(result.min_eig, exact[0])


def test_a_zero_hessian_has_zero_eigenvalues_not_a_failure():
    """Every ReLU dead: the loss is flat in the weights, each product exactly zero, and ARPACK
    cannot start ('Starting vector is zero'); both extreme eigenvalues are then 0."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    with torch.no_grad():
        net[0].bias.fill_(-1e3)
    data = tiny_data(20, 5, 4, seed=1)
    operator = hessian.MeanLossHessian(net, data, params=hessian.hessian_parameters(net))
    assert not np.any(operator.hvp(np.ones(operator.size)))
    result = hessian.extreme_eigenvalues(operator, **TIGHT)
    assert (result.max_eig, result.min_eig, result.failure) == (0.0, 0.0, '')


def test_few_parameters_solved_densely():
    torch.manual_seed(0)
    net = ReferenceClassLogistic(features=2, classes=3).eval()     # 4 weights: below ARPACK's reach
    data = tiny_data(20, 2, 3, seed=4)
    exact = dense_eigenvalues(net, data)
    result = hessian.extreme_eigenvalues(hessian.MeanLossHessian(net, data))
    assert result.max_eig == pytest.approx(exact[-1], rel=1e-4)
    assert result.min_eig == pytest.approx(exact[0], rel=1e-4)


def test_diverged_point_gives_nan_and_says_why():
    net = indefinite_mlp(seed=0)
    data = tiny_data(30, 6, 3, seed=2)
    data.inputs[3, 0] = float('inf')
    operator = hessian.MeanLossHessian(net, data)
    result = hessian.EigenTracker().solve(operator)
    assert np.isnan(result.max_eig) and np.isnan(result.min_eig) and 'inf or NaN' in result.failure
    assert np.isnan(operator.trace(2, np.random.default_rng(0)))


def test_mean_over_dataset_independent_of_batch_size():
    net = indefinite_mlp(seed=1)
    data = tiny_data(50, 6, 3, seed=3)
    small, large = (hessian.MeanLossHessian(net, data, batch_size=b) for b in (7, 64))
    v = np.random.default_rng(0).standard_normal(small.size)
    expected = large.hvp(v)
    np.testing.assert_allclose(small.hvp(v), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    a, b = (hessian.extreme_eigenvalues(h, **TIGHT) for h in (small, large))
    assert a.max_eig == pytest.approx(b.max_eig, rel=1e-4)
    assert a.min_eig == pytest.approx(b.min_eig, rel=1e-4)
    assert small.hvp_count == a.hvp_count + 1 and a.hvp_count > 0


def test_trace_estimate_is_unbiased_for_dense_trace():
    torch.manual_seed(0)
    net = ReferenceClassLogistic(features=5, classes=4).eval()
    data = tiny_data(40, 5, 4, seed=1)
    exact = dense_eigenvalues(net, data).sum()
    estimate = hessian.MeanLossHessian(net, data).trace(400, np.random.default_rng(0))
    assert estimate == pytest.approx(exact, rel=0.1)


def test_warm_start_reuses_previous_eigenvectors():
    net = indefinite_mlp(seed=0)
    data = tiny_data(30, 6, 3, seed=2)
    operator = hessian.MeanLossHessian(net, data)
    tracker = hessian.EigenTracker(tol=1e-3, ncv=6)
    cold = tracker.solve(operator)
    warm = tracker.solve(operator)        # same point again: starts at the answer
    assert (cold.path, warm.path) == ('cold', 'warm')
    assert warm.max_eig == pytest.approx(cold.max_eig, rel=1e-3)
    assert abs(warm.min_eig - cold.min_eig) <= 1e-3 * abs(cold.max_eig)
    # The two start vectors' products, and at most one step to the warm solve's stricter residuals.
    assert warm.hvp_count <= 3 < cold.hvp_count / 3


def moved(net, directions, x, y):
    """A copy of ``net`` with every parameter moved by x d1 + y d2."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        for p, d1, d2 in zip(out.parameters(), *directions):
            p.add_(x * d1 + y * d2)
    return out.eval()


def small_map(seed=3, size=4, step=0.15):
    """A size x size grid (point k at row k // size) around an indefinite tanh MLP along two random
    directions scaled like its weights: the models in serpentine order, with the grid's shape."""
    net = indefinite_mlp(seed)
    gen = torch.Generator().manual_seed(seed)
    directions = [[torch.randn(p.shape, generator=gen) * p.norm() / math.sqrt(p.numel()) for p in net.parameters()]
                  for _ in range(2)]
    coordinates = (np.arange(size) - (size - 1) / 2) * step
    order = scheduler.serpentine(np.arange(size * size), (size, size))
    return [moved(net, directions, coordinates[k % size], coordinates[k // size]) for k in order]


def solve_chain(models, data, tracker):
    results = []
    for net in models:
        results.append(tracker.solve(hessian.MeanLossHessian(net, data, batch_size=16)))
        # Each point is a new operator here, as a moved model is in a grid run: only the vectors carry over.
    return results


def test_warm_chain_matches_the_dense_hessian_at_every_point_in_a_third_of_the_products():
    data = tiny_data(40, 6, 3, seed=5)
    models = small_map()
    tol = hessian.DEFAULT_EIG_TOL
    warm = solve_chain(models, data, hessian.EigenTracker(tol=tol))
    cold = solve_chain(models, data, hessian.EigenTracker(tol=tol, solver='cold'))
    assert [r.path for r in warm] == ['cold'] + ['warm'] * (len(models) - 1)
    assert {r.path for r in cold} == {'cold'}
    for net, w, c in zip(models, warm, cold):
        exact = dense_eigenvalues(net, data)
        assert exact[0] < 0 < exact[-1]
        scale = tol * abs(exact[-1])
        for solved in (w, c):
            assert abs(solved.max_eig - exact[-1]) <= scale and abs(solved.min_eig - exact[0]) <= scale
        assert abs(w.max_eig - c.max_eig) <= scale and abs(w.min_eig - c.min_eig) <= scale
    warm_mean, cold_mean = (np.mean([r.hvp_count for r in results]) for results in (warm, cold))
    assert warm_mean <= cold_mean / 3, (warm_mean, cold_mean)


def test_a_warm_solve_that_cannot_converge_falls_back_to_the_cold_solve():
    """A budget of 2 products is the start block's alone: the warm solve gives up, and the point is
    solved cold -- the cold solve's values bit for bit, its products and the warm attempt's counted."""
    data = tiny_data(40, 6, 3, seed=5)
    first, second = small_map(size=2)[:2]
    tracker = hessian.EigenTracker(warm_budget=2)
    tracker.solve(hessian.MeanLossHessian(first, data))
    fell_back = tracker.solve(hessian.MeanLossHessian(second, data))
    cold = hessian.EigenTracker(solver='cold').solve(hessian.MeanLossHessian(second, data))
    assert fell_back.path == 'fallback' and not fell_back.failure
    assert (fell_back.max_eig, fell_back.min_eig) == (cold.max_eig, cold.min_eig)
    assert fell_back.hvp_count == cold.hvp_count + 2
    # The chain goes on from the fallback's vectors: the next point is warm again.
    tracker.warm_budget = 2 * hessian.DEFAULT_EIG_NCV
    assert tracker.solve(hessian.MeanLossHessian(second, data)).path == 'warm'


def test_a_diverged_point_in_a_warm_chain_falls_back_and_says_why():
    data = tiny_data(30, 6, 3, seed=2)
    net = indefinite_mlp(seed=0)
    tracker = hessian.EigenTracker()
    tracker.solve(hessian.MeanLossHessian(net, data))
    broken = copy.deepcopy(data)
    broken.inputs[3, 0] = float('inf')
    result = tracker.solve(hessian.MeanLossHessian(net, broken))
    assert result.path == 'fallback' and 'inf or NaN' in result.failure
    assert np.isnan(result.max_eig) and np.isnan(result.min_eig)
    assert tracker.solve(hessian.MeanLossHessian(net, data)).path == 'warm'   # the last good vectors kept


def test_warm_solve_of_a_zero_hessian_is_zero():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    with torch.no_grad():
        net[0].bias.fill_(-1e3)
    operator = hessian.MeanLossHessian(net, tiny_data(20, 5, 4, seed=1))
    start = np.random.default_rng(0).standard_normal((2, operator.size))
    result = hessian.warm_extremes(operator, start, 1e-2, budget=10, max_basis=20)
    assert (result.max_eig, result.min_eig, result.failure, result.hvp_count) == (0.0, 0.0, '', 2)


def test_warm_solve_restarts_within_its_basis_and_still_converges():
    """A basis of 8 vectors on a problem that needs more: thick restarts keep the extreme Ritz
    pairs, and the solve ends within the tolerance of the dense eigenvalues."""
    net = indefinite_mlp(seed=3)
    data = tiny_data(30, 6, 3, seed=2)
    exact = dense_eigenvalues(net, data)
    operator = hessian.MeanLossHessian(net, data)
    start = np.random.default_rng(1).standard_normal((2, operator.size))
    tol = 1e-4
    result = hessian.warm_extremes(operator, start, tol, budget=400, max_basis=8)
    assert not result.failure and result.hvp_count > 8
    assert abs(result.max_eig - exact[-1]) <= tol * exact[-1] and abs(result.min_eig - exact[0]) <= tol * exact[-1]


def test_product_progress_shows_the_products_of_a_slow_point():
    class Bar:
        postfix = None

        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

    now = [0.0]
    progress = evaluators.ProductProgress(clock=lambda: now[0])
    bar = Bar()
    progress.attach(bar)
    progress.start_point(100)
    for count in range(101, 106):        # five quick products: nothing shown
        now[0] += 0.1
        progress.products_done(count)
    assert bar.postfix is None
    now[0] += evaluators.PROGRESS_SECONDS
    progress.products_done(106)
    assert bar.postfix == '6 Hessian-vector products into this point'
    progress.products_done(107)          # at once after: the line is not redrawn
    assert bar.postfix.startswith('6 ')
    progress.end_point()
    assert bar.postfix == ''


# ----------------------------------------------------------------------------- retained gradient graphs

RETAIN_BATCH = 16      # 48 digits in 3 batches


def digits_problem(model='cnn', seed=0):
    """A digits model (training mode, which products must switch off) on 48 digits."""
    from losslandscape.models.digits import MODELS
    torch.manual_seed(seed)
    return MODELS[model](), datasets.load_digits(train=True).subset(range(3 * RETAIN_BATCH))


def forward_counter(net):
    """A list that grows by one at every forward call of ``net``."""
    calls = []
    net.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def assert_products_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def recompute_reference(net, data, vectors):
    """The products of a fresh operator that recomputes every batch's graph (the original path)."""
    return hessian.MeanLossHessian(net, data, batch_size=RETAIN_BATCH, retain_graphs=False).hvp_block(vectors)


@pytest.mark.parametrize('retain', [True, 'auto'])
def test_retained_graph_products_equal_recomputed(retain):
    net, data = digits_problem()
    recomputed = hessian.MeanLossHessian(net, data, batch_size=RETAIN_BATCH, retain_graphs=False)
    retained = hessian.MeanLossHessian(net, data, batch_size=RETAIN_BATCH, retain_graphs=retain)
    vectors = np.random.default_rng(0).standard_normal((5, recomputed.size))
    expected = np.stack([recomputed.hvp(v) for v in vectors])
    assert recomputed.retained_batches == 0
    got = np.stack([retained.hvp(v) for v in vectors])
    assert retained.retained_batches == 3
    assert_products_close(got, expected)
    assert_products_close(retained.hvp_block(vectors), expected)
    assert_products_close(recomputed.hvp_block(vectors), expected)    # the forward-over-reverse path
    assert retained.hvp_count == recomputed.hvp_count == 2 * len(vectors)


def test_forward_calls_per_product_follow_retention(monkeypatch):
    """No retention: a forward pass per batch and product. All kept: none after the first product,
    for hvp and hvp_block alike. One of three kept: two per product, and the same products."""
    net, data = digits_problem()
    vectors = np.random.default_rng(1).standard_normal((3, sum(p.numel() for p in hessian.hessian_parameters(net))))
    calls = forward_counter(net)
    recomputed = hessian.MeanLossHessian(net, data, batch_size=RETAIN_BATCH, retain_graphs=False)
    expected = np.stack([recomputed.hvp(v) for v in vectors])
    assert len(calls) == 3 * len(vectors)

    everything = hessian.MeanLossHessian(net, data, batch_size=RETAIN_BATCH, retain_graphs='auto')
    calls.clear()
    everything.hvp(vectors[0])
    assert len(calls) == 3                   # the pass that builds the graphs
    calls.clear()
    everything.hvp(vectors[1])
    everything.hvp_block(vectors)
    assert len(calls) == 0
    per_batch = everything.graph_bytes_per_batch
    assert per_batch > 0

    # A budget of one and a half batches' graphs: the first batch's is kept, the other two recomputed.
    monkeypatch.setattr(batch_sources, 'free_memory_bytes', lambda device: 1.5 * per_batch / hessian.RETAINED_MEMORY_SHARE)
    partial = hessian.MeanLossHessian(net, data, batch_size=RETAIN_BATCH, retain_graphs='auto')
    calls.clear()
    first = partial.hvp(vectors[0])
    assert partial.retained_batches == 1 and len(calls) == 3
    calls.clear()
    rest = [partial.hvp(v) for v in vectors[1:]]
    assert len(calls) == 2 * (len(vectors) - 1)
    assert_products_close(np.stack([first, *rest]), expected)
    assert_products_close(partial.hvp_block(vectors), expected)       # not all kept: the vmap path

    monkeypatch.setattr(batch_sources, 'free_memory_bytes', lambda device: 0.5 * per_batch / hessian.RETAINED_MEMORY_SHARE)
    none_fit = hessian.MeanLossHessian(net, data, batch_size=RETAIN_BATCH, retain_graphs='auto')
    assert_products_close(np.stack([none_fit.hvp(v) for v in vectors]), expected)
    assert none_fit.retained_batches == 0


def test_moving_the_weights_in_place_rebuilds_the_graphs():
    net, data = digits_problem()
    operator = hessian.MeanLossHessian(net, data, batch_size=RETAIN_BATCH, retain_graphs=True)
    v = np.random.default_rng(2).standard_normal(operator.size)
    at_start = operator.hvp(v)
    gen = torch.Generator().manual_seed(3)
    direction = [torch.randn(p.shape, generator=gen) for p in net.parameters()]
    moving.set_weights(net, subsets.get_weights(net), direction, x=0.5)
    moved = operator.hvp(v)
    expected = recompute_reference(net, data, v[None])[0]
    assert_products_close(moved, expected)
    assert np.abs(moved - at_start).max() > 1e-2 * np.abs(at_start).max()
    # A parameter outside the Hessian's (a bias) moves the graphs too.
    with torch.no_grad():
        net.classifier.bias.add_(1.0)
    assert_products_close(operator.hvp(v), recompute_reference(net, data, v[None])[0])


def test_a_buffer_change_rebuilds_the_graphs():
    net, data = digits_problem('cnn_bn')
    operator = hessian.MeanLossHessian(net, data, batch_size=RETAIN_BATCH, retain_graphs=True)
    v = np.random.default_rng(4).standard_normal(operator.size)
    before = operator.hvp(v)
    with torch.no_grad():
        net.features[0][1].running_var.mul_(4.0)
    after = operator.hvp(v)
    assert_products_close(after, recompute_reference(net, data, v[None])[0])
    assert np.abs(after - before).max() > 1e-2 * np.abs(before).max()
    # A replaced buffer (new tensor, same values as one step back) is seen as well.
    net.features[0][1].running_var = net.features[0][1].running_var / 4.0
    assert_products_close(operator.hvp(v), before)


def test_invalidate_covers_changes_behind_the_version_counter():
    net, data = digits_problem()
    operator = hessian.MeanLossHessian(net, data, batch_size=RETAIN_BATCH, retain_graphs=True)
    v = np.random.default_rng(5).standard_normal(operator.size)
    operator.hvp(v)
    net.classifier.weight.data.mul_(3.0)     # .data: autograd's version counter does not see it
    operator.invalidate()
    assert operator.retained_batches == 0
    assert_products_close(operator.hvp(v), recompute_reference(net, data, v[None])[0])


def test_non_finite_product_leaves_the_retained_graphs_usable():
    net, data = digits_problem()
    operator = hessian.MeanLossHessian(net, data, batch_size=RETAIN_BATCH, retain_graphs=True)
    v = np.random.default_rng(6).standard_normal(operator.size)
    expected = operator.hvp(v)
    bad = v.copy()
    bad[0] = np.nan
    with pytest.raises(hessian.NonFiniteProduct):
        operator.hvp(bad)
    with pytest.raises(hessian.NonFiniteProduct):
        operator.hvp_block(np.stack([v, bad]))
    calls = forward_counter(net)
    np.testing.assert_array_equal(operator.hvp(v), expected)
    assert not calls and operator.retained_batches == 3
    assert operator.hvp_count == 5      # failed products count, as they always did


@pytest.mark.parametrize('value', ['yes', 1, 0, None])
def test_bad_retain_graphs_is_refused(value):
    net, data = digits_problem()
    with pytest.raises(UsageError, match='retain_graphs'):
        hessian.MeanLossHessian(net, data, retain_graphs=value)


# ----------------------------------------------------------------------------- the script

DATA = ['--dataset', 'digits', '--data_split', '8', '--threads', '1']


def local_copy(tmp_path, path):
    """A private checkpoint copy, so the default direction file lands in this test's folder."""
    target = tmp_path / os.path.basename(path)
    shutil.copy(path, target)
    return str(target)


def run_eigen(capsys, *argv):
    code, err = call_main(plot_hessian_eigen.main, [*DATA, *argv], capsys)
    assert code == 0, err
    return hdf5_layout.read_surface(str(argv[argv.index('--surf_file') + 1]))


def test_script_end_to_end_2d_same_dir(tmp_path, checkpoints):
    model = local_copy(tmp_path, checkpoints['mlp'])
    done = run_script('plot_hessian_eigen.py', *DATA, '--model', 'mlp', '--model_file', model,
                      '--x=-1:1:3', '--same_dir', '--y=-1:1:2', '--trace', '--trace_samples', '2', '--plot')
    assert done.returncode == 0, done.stderr
    assert '6 points computed' in done.stdout and 'max_eig' in done.stdout
    surf = model + '_weights_same_dir.h5_[-1.0,1.0,3]x[-1.0,1.0,2]_datasplit=8_splitidx=0.h5'
    s = hdf5_layout.read_surface(surf)
    for name in (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG, hdf5_layout.HVP_COUNT, hdf5_layout.TRACE):
        assert s.values[name].shape == (2, 3) and s.done[name].all() and np.isfinite(s.values[name]).all()
    assert (s.values[hdf5_layout.MAX_EIG] > s.values[hdf5_layout.MIN_EIG]).all()
    # The first point of the serpentine chain (the grid's first) is solved cold, with ARPACK's full
    # basis for each end; the others warm, from the point before, in fewer products.
    assert s.values[hdf5_layout.EIG_SOLVE].tolist() == [[0, 1, 1], [1, 1, 1]]
    counts = s.values[hdf5_layout.HVP_COUNT].ravel()
    assert counts[0] >= 2 * (hessian.DEFAULT_EIG_NCV + 1) and (counts[1:] < counts[0]).all()
    # With y = x direction, (x=1, y=-1) and (x=-1, y=1) are both the trained model itself.
    assert s.values[hdf5_layout.MAX_EIG][0, 2] == pytest.approx(s.values[hdf5_layout.MAX_EIG][1, 0], rel=1e-3)
    assert any(p.endswith('abs_ratio_heat_sns.png') for p in os.listdir(tmp_path))


def test_include_params_restricts_the_hessian_of_the_eigen_maps(tmp_path, checkpoints, capsys):
    """--include_params fc2.*: the grid's max_eig at the centre is the top eigenvalue of the Hessian
    over fc2 alone (the positive definite last-layer block), not of the whole weights'."""
    model = local_copy(tmp_path, checkpoints['mlp'])
    net = loading.load('digits', 'mlp', model)
    data = datasets.load_dataset('digits', '', True, False, 8, 0)
    block = hessian.MeanLossHessian(net, data, 'crossentropy', params=hessian.hessian_parameters(net, 'fc2.*'))
    whole = hessian.MeanLossHessian(net, data, 'crossentropy')
    dense = lambda op: np.linalg.eigvalsh(np.column_stack([op.hvp(e) for e in np.eye(op.size)]))
    top_block = dense(block)[-1]
    top_whole = hessian.extreme_eigenvalues(whole, **TIGHT).max_eig
    assert top_whole > 1.05 * top_block              # the restriction matters for the number
    common = ['--model', 'mlp', '--model_file', model, '--x=0:0:1', '--xnorm', 'filter', '--eig_tol', '1e-6',
              '--eig_maxiter', '1000']
    restricted = run_eigen(capsys, *common, '--include_params', 'fc2.*', '--surf_file', tmp_path / 'fc2.h5')
    assert restricted.values[hdf5_layout.MAX_EIG].ravel()[0] == pytest.approx(top_block, rel=1e-3)
    everything = run_eigen(capsys, *common, '--surf_file', tmp_path / 'all.h5')
    assert everything.values[hdf5_layout.MAX_EIG].ravel()[0] == pytest.approx(top_whole, rel=1e-3)


def test_same_file_as_plot_surface_and_resume_after_interrupt(tmp_path, checkpoints, capsys, monkeypatch):
    surf = tmp_path / 's.h5'
    common = ['--model', 'mlp', '--model_file', local_copy(tmp_path, checkpoints['mlp']), '--x=-1:1:5',
              '--xnorm', 'filter', '--xignore', 'biasbn', '--surf_file', surf]
    code, err = call_main(plot_surface.main, [*DATA, *common], capsys)
    assert code == 0, err
    loss = hdf5_layout.read_surface(str(surf)).values[hdf5_layout.TRAIN_LOSS]

    real_solve, calls = hessian.EigenTracker.solve, []

    def crash_on_third(self, operator):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError('simulated crash')
        return real_solve(self, operator)
    monkeypatch.setattr(hessian.EigenTracker, 'solve', crash_on_third)
    with pytest.raises(RuntimeError, match='simulated crash'):
        plot_hessian_eigen.main([*DATA, *[str(a) for a in common]])
    partial = hdf5_layout.read_surface(str(surf))
    assert partial.done[hdf5_layout.MAX_EIG].tolist() == [True, True, False, False, False]

    calls.clear()
    monkeypatch.setattr(hessian.EigenTracker, 'solve', lambda self, op: (calls.append(1), real_solve(self, op))[1])
    s = run_eigen(capsys, *common)
    assert len(calls) == 3
    assert s.done[hdf5_layout.MAX_EIG].all() and s.done[hdf5_layout.MIN_EIG].all()
    assert s.values[hdf5_layout.MAX_EIG].shape == (5,)
    np.testing.assert_array_equal(s.values[hdf5_layout.TRAIN_LOSS], loss)    # plot_surface's values kept
    assert hdf5_layout.HVP_COUNT in s.values and hdf5_layout.TRACE not in s.values


def test_negative_max_eig_is_a_result_not_missing(tmp_path, checkpoints, capsys, monkeypatch):
    fake = hessian.ExtremeEigen(max_eig=-2.0, min_eig=-5.0, max_vec=None, min_vec=None, hvp_count=7)
    monkeypatch.setattr(hessian.EigenTracker, 'solve', lambda self, op: fake)
    args = ['--model', 'mlp', '--model_file', local_copy(tmp_path, checkpoints['mlp']), '--x=-1:1:3',
            '--surf_file', tmp_path / 's.h5']
    s = run_eigen(capsys, *args)
    np.testing.assert_array_equal(s.values[hdf5_layout.MAX_EIG], [-2.0] * 3)
    monkeypatch.setattr(hessian.EigenTracker, 'solve', lambda self, op: pytest.fail('recomputed a finished point'))
    s = run_eigen(capsys, *args)
    np.testing.assert_array_equal(s.values[hdf5_layout.MIN_EIG], [-5.0] * 3)


@pytest.mark.parametrize('flag, message', [
    (['--eig_tol', '0'], '--eig_tol'), (['--eig_ncv', '1'], '--eig_ncv'),
    (['--trace_samples', '0'], '--trace_samples'), (['--eval_test'], '--eval_test')])
def test_bad_eigen_flags_are_refused(tmp_path, checkpoints, capsys, flag, message):
    code, err = call_main(plot_hessian_eigen.main, [*DATA, '--model', 'mlp', '--model_file', checkpoints['mlp'],
                                                    '--x=-1:1:3', '--surf_file', tmp_path / 's.h5', *flag], capsys)
    assert code == 2 and message in err
    assert not os.path.exists(tmp_path / 's.h5')



def assert_within_eig_tol(actual, expected, tol=hessian.DEFAULT_EIG_TOL):
    """Both eigenvalue maps of ``actual`` within ``tol`` x |max_eig| of ``expected``'s, point by point."""
    scale = tol * np.abs(expected.values[hdf5_layout.MAX_EIG])
    for name in EIGEN:
        difference = np.abs(actual.values[name] - expected.values[name])
        assert (difference <= scale).all(), (name, (difference / scale).max())


EIGEN = (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG)
CNN_MAP = ['--model', 'cnn_bn', '--x=-0.5:0.5:4', '--y=-0.5:0.5:4', '--xnorm', 'filter', '--xignore', 'biasbn',
           '--ynorm', 'filter', '--yignore', 'biasbn']


def test_warm_map_agrees_with_cold_in_a_third_of_the_products_and_shows_them(tmp_path, checkpoints, capsys,
                                                                            monkeypatch):
    """The digits CNN on a 4x4 map over +-0.5 along filter-normalized directions: the default (warm)
    and --eig_solver cold agree within --eig_tol x |max_eig| at every point, the warm map takes at
    most a third of the cold one's products, and the progress line says the products of a point
    while it is solved (shown at every product here)."""
    common = [*CNN_MAP, '--model_file', local_copy(tmp_path, checkpoints['cnn_bn'])]
    cold = run_eigen(capsys, *common, '--eig_solver', 'cold', '--surf_file', tmp_path / 'cold.h5')
    monkeypatch.setattr(evaluators, 'PROGRESS_SECONDS', 0.0)
    monkeypatch.setattr(progress, 'LOG_INTERVAL_SECONDS', 0.0)   # stderr is not a terminal here: lines
    code, err = call_main(plot_hessian_eigen.main, [*DATA, *common, '--surf_file', tmp_path / 'warm.h5'], capsys)
    assert code == 0, err
    assert 'Hessian-vector products into this point' in err
    warm = hdf5_layout.read_surface(str(tmp_path / 'warm.h5'))
    assert_within_eig_tol(warm, cold)
    assert (cold.values[hdf5_layout.EIG_SOLVE] == 0).all()
    assert (warm.values[hdf5_layout.EIG_SOLVE].ravel()[1:] == 1).all()
    cold_products, warm_products = (s.values[hdf5_layout.HVP_COUNT].mean() for s in (cold, warm))
    assert warm_products <= cold_products / 3, (warm_products, cold_products)


def test_fallback_through_the_script_stores_the_cold_values_and_every_product(tmp_path, checkpoints, capsys,
                                                                             monkeypatch):
    """No budget for warm solves: each one gives up after its start block (2 products) and the point
    is solved cold, so the map equals --eig_solver cold's bit for bit, with 2 more products at every
    point but the first, and eig_solve says 2 (fallback) there."""
    common = [*CNN_MAP, '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), '--x=-0.5:0.5:3',
              '--y=-0.5:0.5:2']
    cold = run_eigen(capsys, *common, '--eig_solver', 'cold', '--surf_file', tmp_path / 'cold.h5')
    monkeypatch.setattr(hessian, 'WARM_BUDGET_PER_NCV', 0)
    fell_back = run_eigen(capsys, *common, '--surf_file', tmp_path / 'fallback.h5')
    for name in EIGEN:
        np.testing.assert_array_equal(fell_back.values[name], cold.values[name])
    assert fell_back.values[hdf5_layout.EIG_SOLVE].tolist() == [[0, 2, 2], [2, 2, 2]]
    extra = fell_back.values[hdf5_layout.HVP_COUNT] - cold.values[hdf5_layout.HVP_COUNT]
    assert extra.tolist() == [[0, 2, 2], [2, 2, 2]]


def test_no_warm_start_is_the_cold_solver_and_is_recorded(tmp_path, checkpoints, capsys):
    common = ['--model', 'mlp', '--model_file', local_copy(tmp_path, checkpoints['mlp']), '--x=-1:1:3']
    old_flag = run_eigen(capsys, *common, '--no-warm_start', '--surf_file', tmp_path / 'old.h5')
    assert (old_flag.values[hdf5_layout.EIG_SOLVE] == 0).all()
    assert old_flag.args()['eig_solver'] == 'cold'
    default = run_eigen(capsys, *common, '--warm_start', '--surf_file', tmp_path / 'new.h5')
    assert default.values[hdf5_layout.EIG_SOLVE].tolist() == [0, 1, 1] and default.args()['eig_solver'] == 'warm'


MPIEXEC = os.path.join(os.path.dirname(sys.executable), 'mpiexec')


@pytest.mark.skipif(not os.path.exists(MPIEXEC), reason='mpiexec (pip package mpich) is not installed')
def test_two_mpi_ranks_fill_the_grid_like_serial(tmp_path, checkpoints, capsys):
    """Each rank walks its own chain of neighbours (a contiguous run of the serpentine order), which
    it starts cold: two cold points where the serial run has one, and every value within --eig_tol
    x |max_eig| of the serial run's."""
    common = ['--model', 'mlp', '--model_file', local_copy(tmp_path, checkpoints['mlp']), '--x=-1:1:3',
              '--y=-1:1:3', '--xnorm', 'filter', '--ynorm', 'filter']
    serial = run_eigen(capsys, *common, '--surf_file', tmp_path / 'serial.h5')
    done = run_script('plot_hessian_eigen.py', *DATA, *common, '--mpi', '--surf_file', tmp_path / 'mpi.h5',
                      launcher=(MPIEXEC, '-n', '2'))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('points computed') == 1          # only rank 0 reports
    parallel = hdf5_layout.read_surface(str(tmp_path / 'mpi.h5'))
    assert parallel.done[hdf5_layout.MAX_EIG].all() and parallel.done[hdf5_layout.MIN_EIG].all()
    assert (serial.values[hdf5_layout.EIG_SOLVE] == 0).sum() == 1
    starts = scheduler.assign_chains(np.arange(9), 1, 2, (3, 3))[0], 0
    assert sorted(np.flatnonzero(parallel.values[hdf5_layout.EIG_SOLVE].ravel() == 0)) == sorted(starts)
    assert_within_eig_tol(parallel, serial)


def test_original_eigenvalue_file_resumes_its_missing_points_only(tmp_path, checkpoints, capsys, monkeypatch):
    """Files of the original code hold max_eig/min_eig with -1 where not computed, and no hvp_count:
    only the -1 points are solved, and the stored values stay as they are."""
    common = ['--model', 'mlp', '--model_file', local_copy(tmp_path, checkpoints['mlp']), '--x=-1:1:3',
              '--y=-1:1:2', '--xnorm', 'filter', '--ynorm', 'filter']
    # The missing point has no solved neighbour before it, so it starts a chain: solved cold, as
    # --eig_solver cold solves every point, and so equal to this run's value bit for bit.
    fresh = run_eigen(capsys, *common, '--eig_solver', 'cold', '--surf_file', tmp_path / 'fresh.h5')
    legacy = tmp_path / 'legacy.h5'
    with h5py.File(legacy, 'w') as f:   # the original's layout: (nx, ny) arrays, no done/ group
        f[hdf5_layout.DIR_FILE] = fresh.dir_file
        f[hdf5_layout.XCOORDINATES], f[hdf5_layout.YCOORDINATES] = fresh.xcoordinates, fresh.ycoordinates
        for name in (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG):
            stored = fresh.values[name].copy()
            stored[0, 0] = 99.5                                   # a marker: must survive
            stored[1, 2] = hdf5_layout.LEGACY_MISSING             # not computed yet
            f[name] = stored.reshape(3, 2)
    real_solve, calls = hessian.EigenTracker.solve, []
    monkeypatch.setattr(hessian.EigenTracker, 'solve', lambda self, op: (calls.append(1), real_solve(self, op))[1])
    s = run_eigen(capsys, *common, '--surf_file', legacy)
    assert len(calls) == 1
    for name in (hdf5_layout.MAX_EIG, hdf5_layout.MIN_EIG):
        assert s.values[name][0, 0] == 99.5
        assert s.values[name][1, 2] == fresh.values[name][1, 2]
        assert s.done[name].all()
    assert s.done[hdf5_layout.HVP_COUNT].tolist() == [[False] * 3, [False, False, True]]
    # Adding --trace to the finished file computes the trace alone.
    calls.clear()
    s = run_eigen(capsys, *common, '--surf_file', legacy, '--trace', '--trace_samples', '2')
    assert not calls and s.done[hdf5_layout.TRACE].all() and s.values[hdf5_layout.MAX_EIG][0, 0] == 99.5
