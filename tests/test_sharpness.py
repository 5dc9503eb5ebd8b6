"""sharpness.py: worst-case, SAM, adaptive and average-case sharpness, against a quadratic loss
where the answers are known in closed form and against the loss along the top eigenvector."""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from losslandscape import sharpness
from losslandscape.io import hdf5_layout
from tests.conftest import assert_one_line_error, call_main, snapshot
from tests.fixtures import objectives as fx

PKG = 'tests.fixtures.objectives'
REGRESSION = ['--dataset', f'{PKG}:regression_data', '--loss_name', f'{PKG}:squared_error', '--batch_size', '16',
              '--threads', '1']


def whole(dataset):
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


def test_quadratic_loss_at_its_minimum_has_the_closed_form_sharpness(tmp_path, capsys):
    """Least squares at its solution: L(w + e) - L(w) = e^T A e with A = X^T X / N (half the
    Hessian), so the worst case over ||e|| <= rho is lambda_max(A) rho^2 and the average over the
    sphere is tr(A) rho^2 / n."""
    batch = whole(fx.regression_data('', True))
    x = batch['features'].double()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, batch['target'].double().unsqueeze(1)).solution
    net = fx.linear_regression_model()
    with torch.no_grad():
        net.weight.copy_(solution[:-1].T)
        net.bias.copy_(solution[-1])
    model = tmp_path / 'lin.t7'
    torch.save({'state_dict': net.state_dict()}, model)
    rhos = [0.1, 0.5]
    code, err = call_main(sharpness.main, [*REGRESSION, '--model', f'{PKG}:linear_regression_model', '--model_file',
                                           model, '--rho', *map(str, rhos), '--samples', '200',
                                           '--sharpness_file', tmp_path / 's.h5'], capsys)
    assert code == 0, err
    values, attrs = hdf5_layout.read_sharpness_file(str(tmp_path / 's.h5'))
    A = (x.T @ x / len(x)).numpy()
    lam, n = np.linalg.eigvalsh(A)[-1], A.shape[0]
    np.testing.assert_allclose(values['rho'], rhos)
    for i, rho in enumerate(rhos):
        assert values['worst_case'][i] == pytest.approx(lam * rho ** 2, rel=1e-2)
        expected_average = np.trace(A) * rho ** 2 / n
        assert abs(values['average'][i] - expected_average) < 4 * values['average_stderr'][i] + 1e-3 * expected_average
        assert 0 <= values['adaptive'][i] and values['sam_one_step'][i] <= values['worst_case'][i]
    assert attrs['num_params'] == n


def test_worst_case_is_never_below_sam_nor_the_top_eigenvector(tmp_path, capsys):
    net = fx.regression_model()
    model = tmp_path / 'reg.t7'
    torch.save({'state_dict': net.state_dict()}, model)
    rhos = [0.05, 0.3, 1.0]
    code, err = call_main(sharpness.main, [*REGRESSION, '--model', f'{PKG}:regression_model', '--model_file', model,
                                           '--rho', *map(str, rhos), '--sharpness_file', tmp_path / 's.h5'], capsys)
    assert code == 0, err
    values, _ = hdf5_layout.read_sharpness_file(str(tmp_path / 's.h5'))
    # The top eigenvector of the dense Hessian of the mean squared error, over the dim > 1 weights.
    batch = whole(fx.regression_data('', True))
    net = net.double()   # the dense Hessian in float64 (the checkpoint above is float32)
    names = [name for name, p in net.named_parameters() if p.dim() > 1]
    params = dict(net.named_parameters())
    shapes = [params[name].shape for name in names]
    fixed = {name: p.detach() for name, p in params.items() if name not in names}

    def mean_loss(flat):
        pieces, start = {}, 0
        for name, shape in zip(names, shapes):
            pieces[name] = flat[start:start + shape.numel()].view(shape)
            start += shape.numel()
        pred = functional_call(net, {**fixed, **pieces}, (batch['features'].double(),)).squeeze(-1)
        return ((pred - batch['target'].double()) ** 2).mean()
    flat = torch.cat([params[name].detach().reshape(-1) for name in names])
    vector = torch.linalg.eigh(torch.autograd.functional.hessian(mean_loss, flat))[1][:, -1]
    centre = mean_loss(flat).item()
    for i, rho in enumerate(rhos):
        along = max(mean_loss(flat + rho * vector).item(), mean_loss(flat - rho * vector).item()) - centre
        assert values['worst_case'][i] >= values['sam_one_step'][i] - 1e-12
        assert values['worst_case'][i] >= along * (1 - 1e-4)
        assert values['worst_case'][i] > values['average'][i]
    assert np.all(np.diff(values['worst_case']) > 0)     # a larger ball holds more


def test_no_random_restarts_and_no_ascent_steps(tmp_path, capsys):
    """--restarts 0 and --ascent_steps 0 are allowed: each maximum is then over its given starts alone."""
    torch.save({'state_dict': fx.regression_model().state_dict()}, tmp_path / 'reg.t7')
    code, err = call_main(sharpness.main, [*REGRESSION, '--model', f'{PKG}:regression_model', '--model_file',
                                           tmp_path / 'reg.t7', '--restarts', '0', '--ascent_steps', '0',
                                           '--skip_eigen_start', '--sharpness_file', tmp_path / 's.h5'], capsys)
    assert code == 0, err
    values, _ = hdf5_layout.read_sharpness_file(str(tmp_path / 's.h5'))
    assert values['worst_case'][0] == values['sam_one_step'][0]   # SAM's step is the one start, not moved


@pytest.mark.parametrize('extra,words', [
    (['--rho', '0'], ['--rho', 'positive']),
    (['--rho', '0.1', 'nan'], ['--rho']),
    (['--samples', '1'], ['--samples']),
    (['--eta', '-1'], ['--eta']),
    (['--include_params', 'nothing.*'], ['--include_params', 'matches no parameter']),
    (['--sharpness_file', '{d}/reg.t7/s.h5'], ['--sharpness_file', 'is not a folder']),
], ids=['rho zero', 'rho nan', 'one sample', 'negative eta', 'subset matches nothing', 'folder under a file'])
def test_bad_input(tmp_path, capsys, extra, words):
    torch.save({'state_dict': fx.regression_model().state_dict()}, tmp_path / 'reg.t7')
    before = snapshot(tmp_path)
    code, err = call_main(sharpness.main, [*REGRESSION, '--model', f'{PKG}:regression_model', '--model_file',
                                           tmp_path / 'reg.t7', *[a.format(d=tmp_path) for a in extra]], capsys)
    assert_one_line_error(code, err, words)
    assert snapshot(tmp_path) == before
