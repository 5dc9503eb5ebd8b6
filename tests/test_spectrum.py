"""hessian_spectrum.py and spectrum.py against dense Hessians: top eigenpairs, Krylov and Hutch++ traces, SLQ
density, eigenvector directions and the curvature plot_surface.py sees along them."""
import os
import sys

import numpy as np
import pytest
import torch

from losslandscape import hessian_spectrum, plot_surface
from losslandscape.cli.parsing import run_main
from losslandscape.curvature import hessian, spectrum
from losslandscape.data import batch_sources, datasets
from losslandscape.io import hdf5_layout
from losslandscape.objectives import objective
from losslandscape.parallel.mpi_comm import SerialComm
from tests.conftest import assert_one_line_error, call_main, run_script, snapshot, train_briefly
from tests.fixtures import objectives as fx

PKG = 'tests.fixtures.objectives'
REGRESSION = ['--dataset', f'{PKG}:regression_data', '--model', f'{PKG}:regression_model',
              '--loss_name', f'{PKG}:squared_error', '--batch_size', '16', '--threads', '1']


def random_symmetric(n, spectrum_values, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q * spectrum_values) @ q.T


def matrices():
    rng = np.random.default_rng(7)
    definite = np.concatenate([[40, 25, 12, 9, 7], np.abs(rng.standard_normal(95)) * 0.3])
    indefinite = np.concatenate([[30, 18, 10, 6, 5], rng.standard_normal(55) * 0.8, [-4.0]])
    return {'definite': random_symmetric(100, definite, 1), 'indefinite': random_symmetric(61, indefinite, 2)}


@pytest.mark.parametrize('kind', ['definite', 'indefinite'])
def test_spectrum_methods_on_dense_matrices(kind):
    H = matrices()[kind]
    n, exact = H.shape[0], np.linalg.eigvalsh(H)[::-1]
    matvec = lambda v: H @ v
    values, vectors, residuals = spectrum.top_eigenpairs(matvec, n, 5)
    np.testing.assert_allclose(values, exact[:5], rtol=1e-2)
    assert (residuals < 1e-4 * abs(exact[0])).all()
    trace, stderr = spectrum.hutch_plus_plus(matvec, n)                      # default products
    assert trace == pytest.approx(np.trace(H), rel=0.02) and stderr >= 0
    grid, density = spectrum.smoothed_density(spectrum.slq_density(matvec, n, deflate=(values, vectors)))
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    assert np.trapezoid(grid * density, grid) == pytest.approx(np.trace(H) / n, rel=0.05)


def test_hutch_plus_plus_beats_hutchinson_for_the_same_products():
    """The point of Hutch++: on a matrix with a few large eigenvalues, its error at m products is
    far below plain Hutchinson's at the same m (averaged over seeds)."""
    H = matrices()['definite']
    n, exact, m = H.shape[0], np.trace(H), 60
    plus, plain = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        plus.append(abs(spectrum.hutch_plus_plus(lambda v: H @ v, n, m, rng)[0] - exact))
        z = spectrum.rademacher(np.random.default_rng(100 + seed), n, m)
        plain.append(abs(np.einsum('ij,ij->j', z, H @ z).mean() - exact))
    assert np.mean(plus) < 0.5 * np.mean(plain)


def bulk_with_outliers(n=600, seed=3):
    """A network-like spectrum: a few large eigenvalues of both signs over a broad bulk, so that
    neither the top eigenpairs alone nor a few random probes give the trace."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([[60, 35, 20, 12, 8, 6], [-9, -5], rng.standard_normal(n - 8) * 0.4 + 0.1])
    return random_symmetric(n, values, seed)


def test_krylov_trace_reuses_the_eigen_solve_and_beats_hutch_plus_plus():
    """The trace on the top-k solve's Krylov space plus probes of the rest: exactly num_hvps new
    products (a quarter extending that basis), unbiased, its standard error the size of its error,
    and over seeds a smaller error than Hutch++ given the same eigenpairs and the same products."""
    H = bulk_with_outliers()
    n, exact, budget = H.shape[0], np.trace(H), 40
    errors, stderrs, hutch_errors = [], [], []
    for seed in range(25):
        calls = []
        matvec = lambda v: calls.append(1) or H @ v
        basis = spectrum.Lanczos(matvec, np.random.default_rng(seed).standard_normal(n))
        values, vectors, _ = spectrum.top_eigenpairs(matvec, n, 5, 1e-6, lanczos=basis)
        eig_steps, eig_calls = basis.steps, len(calls)
        assert eig_calls == eig_steps
        trace, stderr = spectrum.krylov_trace(matvec, n, budget, np.random.default_rng(1000 + seed),
                                              matmat=lambda rows: rows @ H, lanczos=basis)
        assert len(calls) - eig_calls == budget // 4                      # the basis grew by a quarter ...
        assert basis.steps == eig_steps + budget // 4                    # ... the probes went through matmat
        errors.append(trace - exact)
        stderrs.append(stderr)
        rng = np.random.default_rng(1000 + seed)
        hutch_errors.append(spectrum.hutch_plus_plus(lambda v: H @ v, n, budget, rng,
                                                     deflate=(values, vectors))[0] - exact)
    rms, hutch_rms = np.sqrt(np.mean(np.square(errors))), np.sqrt(np.mean(np.square(hutch_errors)))
    assert rms < 0.7 * hutch_rms
    assert abs(np.mean(errors)) < 3 * rms / np.sqrt(len(errors))       # no bias beyond chance
    assert 0.5 < np.mean(stderrs) / rms < 2.0


@pytest.mark.parametrize('kind', ['definite', 'indefinite'])
def test_krylov_trace_is_exact_when_its_products_span_the_space(kind):
    H = matrices()[kind]
    n = H.shape[0]
    calls = []
    trace, stderr = spectrum.krylov_trace(lambda v: calls.append(1) or H @ v, n, n + 5)
    assert trace == pytest.approx(np.trace(H), rel=1e-10) and stderr == 0 and len(calls) == n
    # Short of that, the default number of products is within 2 % on the bulk-and-outliers spectrum.
    H = bulk_with_outliers()
    trace, stderr = spectrum.krylov_trace(lambda v: H @ v, H.shape[0])
    assert trace == pytest.approx(np.trace(H), rel=0.02) and 0 < stderr < 0.02 * np.trace(H)


def test_lanczos_basis_stays_orthonormal():
    H = bulk_with_outliers(n=80)
    basis = spectrum.Lanczos(lambda v: H @ v, np.random.default_rng(0).standard_normal(80))
    basis.extend(60)
    np.testing.assert_allclose(basis.basis @ basis.basis.T, np.eye(60), atol=1e-10)
    np.testing.assert_allclose(np.sum(basis.alphas), np.trace(basis.basis @ H @ basis.basis.T), rtol=1e-10)


@pytest.mark.parametrize('seed', range(12))
def test_lanczos_stops_at_an_invariant_subspace_whatever_the_rounding(seed):
    # A start inside a 3-dimensional invariant subspace: the basis cannot grow past it. Rounding
    # leaves a last direction of about 1e-12 relative, larger or smaller with the basis and the
    # BLAS kernels, so several bases are tried.
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((20, 20)))
    small = (q * np.arange(1.0, 21.0)) @ q.T
    inside = spectrum.Lanczos(lambda v: small @ v, q[:, :3] @ np.array([1.0, 2.0, 3.0]))
    inside.extend(10)
    assert inside.exhausted and inside.steps == 3


def dense_hessian(operator):
    columns = np.column_stack([operator.hvp(e) for e in np.eye(operator.size)])
    return (columns + columns.T) / 2


@pytest.fixture
def regression(tmp_path):
    net = fx.regression_model()
    path = tmp_path / 'reg.t7'
    torch.save({'state_dict': net.state_dict()}, path)
    source = batch_sources.batch_source(fx.regression_data('', True), '', True, 16, 'cpu', 'resident')
    operator = hessian.MeanLossHessian(net, source, objective.resolve(fx.squared_error))
    return net, str(path), dense_hessian(operator)


def test_spectrum_file_and_sharpest_directions_match_the_dense_hessian(tmp_path, regression, capsys):
    net, model, H = regression
    exact_values, exact_vectors = np.linalg.eigh(H)
    exact_values, exact_vectors = exact_values[::-1], exact_vectors[:, ::-1]
    out, directions = tmp_path / 'spec.h5', tmp_path / 'sharp.h5'
    argv = [*REGRESSION, '--model_file', model, '--trace', '--density', '--spectrum_file', out,
            '--save_directions', directions]
    code, err = call_main(hessian_spectrum.main, argv, capsys)
    assert code == 0, err
    data, attrs = hdf5_layout.read_spectrum_file(str(out))
    assert exact_values[-1] < 0 < exact_values[0]                         # indefinite
    np.testing.assert_allclose(data['eigenvalues'], exact_values[:5], rtol=1e-2)
    assert float(data['trace']) == pytest.approx(np.trace(H), rel=0.02)
    grid, density = data['density_grid'], data['density']
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    assert np.trapezoid(grid * density, grid) == pytest.approx(np.trace(H) / H.shape[0], rel=0.05)
    assert data['hvp_count'] > 0 and os.path.exists(str(out) + '_density.png')
    # The direction file: the top two eigenvectors over the dim > 1 weights, zero for the biases.
    xdir, ydir, _ = hdf5_layout.read_direction_file(str(directions))
    for direction, column in ((xdir, 0), (ydir, 1)):
        assert all(not d.any() for d, p in zip(direction, net.parameters()) if p.dim() <= 1)
        flat = np.concatenate([d.ravel() for d, p in zip(direction, net.parameters()) if p.dim() > 1])
        assert np.linalg.norm(flat) == pytest.approx(1.0, rel=1e-5)
        assert abs(flat @ exact_vectors[:, column]) >= 0.99
    # Rerunning the same command reuses everything.
    assert run_main(hessian_spectrum.main, [str(a) for a in argv]) == 0
    assert '0 Hessian-vector products now' in capsys.readouterr().out


def test_a_trace_added_later_equals_one_computed_with_the_eigenpairs(tmp_path, regression, capsys):
    """The trace extends the eigen solve's Krylov basis: when the eigenpairs come from the file (a
    run stopped between the parts, or --trace added later), the solve is made again for its basis,
    so the trace is the one a single run gives."""
    _, model, _ = regression
    common = [*REGRESSION, '--model_file', model, '--top_k', '2', '--trace_hvps', '8']
    code, err = call_main(hessian_spectrum.main, [*common, '--trace', '--spectrum_file', tmp_path / 'one.h5'], capsys)
    assert code == 0, err
    code, err = call_main(hessian_spectrum.main, [*common, '--spectrum_file', tmp_path / 'two.h5'], capsys)
    assert code == 0, err
    code, err = call_main(hessian_spectrum.main, [*common, '--trace', '--spectrum_file', tmp_path / 'two.h5'], capsys)
    assert code == 0, err
    one, two = (hdf5_layout.read_spectrum_file(str(tmp_path / name)) for name in ('one.h5', 'two.h5'))
    assert float(two[0]['trace']) == pytest.approx(float(one[0]['trace']), rel=1e-12)
    assert two[1][hdf5_layout.TRACE_SETTINGS + '_hvps'] == 8            # the trace's own products only


def test_curvature_along_the_top_eigenvector_is_the_top_eigenvalue(tmp_path, regression, capsys):
    """On a smooth (tanh) model, plot_surface's 1D curve along the saved x direction bends at 0 by
    the top eigenvalue: (L(h) - 2 L(0) + L(-h)) / h^2 = v^T H v."""
    net, model, H = regression
    directions = tmp_path / 'sharp.h5'
    code, err = call_main(hessian_spectrum.main, [*REGRESSION, '--model_file', model, '--top_k', '2',
                                                  '--spectrum_file', tmp_path / 's.h5',
                                                  '--save_directions', directions], capsys)
    assert code == 0, err
    h = 0.01
    code, err = call_main(plot_surface.main, [*REGRESSION, '--model_file', model, '--dir_file', directions,
                                              f'--x=-{h}:{h}:3', '--surf_file', tmp_path / 'curve.h5'], capsys)
    assert code == 0, err
    loss = hdf5_layout.read_surface(str(tmp_path / 'curve.h5')).values['train_loss']
    curvature = (loss[0] - 2 * loss[1] + loss[2]) / h ** 2
    assert curvature == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=0.05)


def test_definite_last_layer_hessian(tmp_path, capsys):
    """Cross-entropy is convex in the last layer: over fc2 alone the Hessian is positive semidefinite."""
    net = train_briefly('mlp', 0)
    model = tmp_path / 'mlp.t7'
    torch.save({'state_dict': net.state_dict()}, model)
    data = datasets.load_dataset('digits', '', True, False, 4, 0)
    operator = hessian.MeanLossHessian(net, data, 'crossentropy', 128, params=hessian.hessian_parameters(net, 'fc2.*'))
    H = dense_hessian(operator)
    exact = np.linalg.eigvalsh(H)[::-1]
    assert exact[-1] > -1e-6 * exact[0]
    code, err = call_main(hessian_spectrum.main, ['--dataset', 'digits', '--model', 'mlp', '--model_file', model,
                                                  '--data_split', '4', '--include_params', 'fc2.*', '--trace',
                                                  '--threads', '1', '--spectrum_file', tmp_path / 's.h5'], capsys)
    assert code == 0, err
    data, _ = hdf5_layout.read_spectrum_file(str(tmp_path / 's.h5'))
    np.testing.assert_allclose(data['eigenvalues'], exact[:5], rtol=1e-2)
    assert float(data['trace']) == pytest.approx(np.trace(H), rel=0.02)


BAD = [
    ('top_k zero', ['--top_k', '0'], ['--top_k']),
    ('directions need two', ['--top_k', '1', '--save_directions', '{d}/x.h5'], ['--save_directions', '--top_k']),
    ('norm without directions', ['--xnorm', 'filter'], ['--xnorm', '--save_directions']),
    ('too few trace products', ['--trace', '--trace_hvps', '2'], ['--trace_hvps', 'at least 3']),
    ('sigma out of range', ['--density', '--density_sigma', '2'], ['--density_sigma']),
    ('subset matches nothing', ['--include_params', 'decoder.*'], ['--include_params', 'matches no parameter']),
    ('a surface file as spectrum file', ['--spectrum_file', '{d}/surf.h5'], ['not a spectrum file']),
    ('spectrum file of another model', ['--spectrum_file', '{d}/other.h5'], ['model_file', 'another --spectrum_file']),
]


@pytest.mark.parametrize('name,extra,words', BAD, ids=[b[0] for b in BAD])
def test_bad_input(tmp_path, regression, capsys, name, extra, words):
    _, model, _ = regression
    other = tmp_path / 'other.t7'
    torch.save({'state_dict': fx.regression_model().state_dict()}, other)
    code, err = call_main(hessian_spectrum.main, [*REGRESSION, '--model_file', other, '--top_k', '1',
                                                  '--spectrum_file', tmp_path / 'other.h5'], capsys)
    assert code == 0, err
    hdf5_layout.write_surface_file(str(tmp_path / 'surf.h5'), '', np.zeros(2), None,
                                   {'train_loss': np.zeros(2)}, {'train_loss': np.ones(2, bool)}, {})
    before = snapshot(tmp_path)
    code, err = call_main(hessian_spectrum.main, [*REGRESSION, '--model_file', model,
                                                  *[a.format(d=tmp_path) for a in extra]], capsys)
    assert_one_line_error(code, err, words)
    assert snapshot(tmp_path) == before


class ShardOf(SerialComm):
    """Rank ``rank`` of ``size`` whose sum over the ranks is its own share alone (what one rank
    computes), except for the one-element sum of the objective's count: the whole data set's."""

    def __init__(self, rank, size, total_count):
        self.rank, self.size, self.total_count = rank, size, total_count

    def sum(self, array):
        return np.array([float(self.total_count)]) if array.shape == (1,) else array


def test_products_split_by_data_shard_add_up_to_the_whole(regression):
    """Each rank takes every size-th batch and the custom objective's count is summed over the
    shards: the two ranks' shares are each partial, and add up to the serial product."""
    net, _, H = regression
    source = batch_sources.batch_source(fx.regression_data('', True), '', True, 16, 'cpu', 'resident')
    shares = [hessian.MeanLossHessian(net, source, objective.resolve(fx.squared_error),
                                      comm=ShardOf(rank, 2, source.num_samples)) for rank in (0, 1)]
    v = np.random.default_rng(0).standard_normal(H.shape[0])
    parts = [share.hvp(v) for share in shares]
    assert all(np.linalg.norm(part - H @ v) > 0.05 * np.linalg.norm(H @ v) for part in parts)
    np.testing.assert_allclose(parts[0] + parts[1], H @ v, rtol=1e-5, atol=1e-7)
    block = [share.hvp_block(np.stack([v, -v])) for share in shares]
    np.testing.assert_allclose(block[0] + block[1], np.stack([H @ v, -(H @ v)]), rtol=1e-5, atol=1e-7)


MPIEXEC = os.path.join(os.path.dirname(sys.executable), 'mpiexec')


@pytest.mark.skipif(not os.path.exists(MPIEXEC), reason='mpiexec (pip package mpich) is not installed')
def test_two_ranks_give_the_serial_spectrum(tmp_path, regression):
    """mpiexec -n 2 hessian_spectrum.py --mpi: the same eigenvalues, trace and density as one
    process (the products differ only in the order of their sums), one file, said once."""
    _, model, _ = regression
    common = [*REGRESSION, '--model_file', model, '--top_k', '3', '--trace', '--trace_hvps', '12', '--density',
              '--density_starts', '2', '--density_steps', '10']
    serial = run_script('hessian_spectrum.py', *common, '--spectrum_file', tmp_path / 'serial.h5')
    assert serial.returncode == 0, serial.stderr
    parallel = run_script('hessian_spectrum.py', *common, '--mpi', '--spectrum_file', tmp_path / 'mpi.h5',
                          launcher=(MPIEXEC, '-n', '2'))
    assert parallel.returncode == 0, parallel.stderr
    assert parallel.stdout.count('eigenvalue 1:') == 1 and parallel.stdout.count('trace:') == 1
    one, two = (hdf5_layout.read_spectrum_file(str(tmp_path / name))[0] for name in ('serial.h5', 'mpi.h5'))
    for key in ('eigenvalues', 'trace', 'density'):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-9 * np.abs(one[key]).max())
    assert float(two['hvp_count']) == float(one['hvp_count'])
