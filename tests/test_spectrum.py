"""hessian_spectrum.py and spectrum.py against dense Hessians: top eigenpairs, Hutch++ trace, SLQ
density, eigenvector directions and the curvature plot_surface.py sees along them."""
import os

import numpy as np
import pytest
import torch

import dataloader
import hdf5_layout
import hessian
import hessian_spectrum
import objective
import plot_surface
import spectrum
from cli import run_main
from tests.conftest import assert_one_line_error, call_main, snapshot, train_briefly
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


def dense_hessian(operator):
    columns = np.column_stack([operator.hvp(e) for e in np.eye(operator.size)])
    return (columns + columns.T) / 2


@pytest.fixture
def regression(tmp_path):
    net = fx.regression_model()
    path = tmp_path / 'reg.t7'
    torch.save({'state_dict': net.state_dict()}, path)
    source = dataloader.batch_source(fx.regression_data('', True), '', True, 16, 'cpu', 'resident')
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
    data = dataloader.load_dataset('digits', '', True, False, 4, 0)
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
    ('too few trace products', ['--trace', '--trace_hvps', '2'], ['--trace_hvps']),
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
