"""Any model, data and loss: custom loss functions over dict batches, models that compute their own
loss (model, causal_lm), parameter subsets, streamed data, the Python API and the Hessian of a
custom objective -- each checked against an independent computation."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import losslandscape
from losslandscape import plot_hessian_eigen, plot_surface
from losslandscape.cli.parsing import run_main
from losslandscape.data import batch_sources
from losslandscape.directions import moving, normalization, subsets
from losslandscape.engine import progress
from losslandscape.io import hdf5_layout
from tests.conftest import assert_one_line_error, call_main, snapshot
from tests.fixtures import objectives as fx

PKG = 'tests.fixtures.objectives'
REGRESSION = ['--dataset', f'{PKG}:regression_data', '--model', f'{PKG}:regression_model',
              '--loss_name', f'{PKG}:squared_error', '--threads', '1']
TOKENS = ['--dataset', f'{PKG}:token_data', '--threads', '1']


def save(net, path):
    torch.save({'state_dict': net.state_dict()}, path)
    return str(path)


def surface_run(argv, capsys):
    code = run_main(plot_surface.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def points(surface):
    """[(index, x, y)] of every grid point of a surface."""
    if surface.ycoordinates is None:
        return [((j,), x, 0.0) for j, x in enumerate(surface.xcoordinates)]
    return [((i, j), x, y) for i, y in enumerate(surface.ycoordinates) for j, x in enumerate(surface.xcoordinates)]


def moved_parameters(net, dir_file, x, y):
    """name -> the parameter at (x, y) along the direction file's directions, computed here."""
    xdir, ydir, _ = hdf5_layout.read_direction_file(dir_file)
    ydir = ydir or [np.zeros_like(d) for d in xdir]
    return {name: p.detach() + x * torch.as_tensor(dx) + y * torch.as_tensor(dy)
            for (name, p), dx, dy in zip(net.named_parameters(), xdir, ydir)}


def whole_dataset(dataset):
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


def regression_values(net, dataset, params):
    batch = whole_dataset(dataset)
    error = functional_call(net, params, (batch['features'],)).squeeze(-1).double() - batch['target'].double()
    return (error ** 2).mean().item(), error.abs().mean().item()


def token_losses(net, dataset, params, shift):
    """(mean over every counted token of the data set, its count), from the logits."""
    batch = whole_dataset(dataset)
    logits = functional_call(net, params, (batch['input_ids'],)).logits.double()
    labels = batch['labels']
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction='sum')
    count = int((labels != -100).sum())
    return losses.item() / count, count


# ----------------------------------------------------------------------------- custom loss, dict batches

def test_custom_loss_over_dict_batches_is_the_mean_along_the_stored_directions(tmp_path, capsys):
    model = save(fx.regression_model(), tmp_path / 'reg.t7')
    surf = tmp_path / 's.h5'
    surface_run([*REGRESSION, '--model_file', model, '--x=-1:1:3', '--y=-0.5:0.5:2', '--xnorm', 'filter',
                 '--ynorm', 'filter', '--batch_size', '16', '--eval_test', '--surf_file', surf], capsys)
    s = hdf5_layout.read_surface(str(surf))
    assert {'train_loss', 'train_abs_error', 'test_loss', 'test_abs_error'} <= set(s.values)
    assert 'train_acc' not in s.values   # no 'correct' key, no accuracy
    net = fx.regression_model()
    for split, dataset in (('train', fx.regression_data('', True)), ('test', fx.regression_data('', False))):
        for index, x, y in points(s):
            loss, abs_error = regression_values(net, dataset, moved_parameters(net, s.dir_file, x, y))
            assert s.values[f'{split}_loss'][index] == pytest.approx(loss, rel=1e-5)
            assert s.values[f'{split}_abs_error'][index] == pytest.approx(abs_error, rel=1e-5)


# ----------------------------------------------------------------------------- models with their own loss

@pytest.mark.parametrize('loss_name,factory,shift', [('causal_lm', 'causal_model', True),
                                                     ('model', 'tagger_model', False)])
def test_model_losses_are_weighted_by_their_counted_tokens(tmp_path, capsys, loss_name, factory, shift):
    net = getattr(fx, factory)()
    model = save(net, tmp_path / 'm.t7')
    surf = tmp_path / 's.h5'
    surface_run([*TOKENS, '--model', f'{PKG}:{factory}', '--model_file', model, '--loss_name', loss_name,
                 '--x=-1:1:3', '--batch_size', '4', '--surf_file', surf], capsys)
    s = hdf5_layout.read_surface(str(surf))
    dataset = fx.token_data('', True)
    for index, x, _ in points(s):
        expected, _ = token_losses(net, dataset, moved_parameters(net, s.dir_file, x, 0.0), shift)
        assert s.values['train_loss'][index] == pytest.approx(expected, rel=1e-5)
    if loss_name == 'causal_lm':
        np.testing.assert_allclose(s.values['train_perplexity'], np.exp(s.values['train_loss']), rtol=1e-12)
    else:
        assert 'train_perplexity' not in s.values
    # The weighting matters here: the mean of the batches' means is another number.
    params = dict(net.named_parameters())
    batch_means = []
    for start in range(0, len(dataset), 4):
        part = torch.utils.data.Subset(dataset, range(start, min(start + 4, len(dataset))))
        mean, count = token_losses(net, part, params, shift)
        batch_means.append(mean) if count else None
    assert abs(np.mean(batch_means) - token_losses(net, dataset, params, shift)[0]) > 1e-3


# ----------------------------------------------------------------------------- parameter subsets

def test_tied_weights_move_once_along_the_stored_direction_under_states(tmp_path, capsys):
    """state_dict() names a tied tensor twice: both entries of a 'states' direction hold how it
    moves (the surface is the loss with the tensor moved by it), and a subset that keeps one name
    of it but not the other is refused before anything is written."""
    net = fx.tied_tagger_model()
    model = save(net, tmp_path / 'tied.t7')
    common = [*TOKENS, '--model', f'{PKG}:tied_tagger_model', '--model_file', model, '--loss_name', 'model',
              '--x=0:1:2', '--dir_type', 'states']
    before = snapshot(tmp_path)
    code, err = call_main(plot_surface.main, [*common, '--include_params', 'embed.*'], capsys)
    assert_one_line_error(code, err, ["'embed.weight'", "'head.weight'", 'tied weights'])
    assert snapshot(tmp_path) == before
    surface_run([*common, '--surf_file', tmp_path / 's.h5'], capsys)
    s = hdf5_layout.read_surface(str(tmp_path / 's.h5'))
    xdir, _, _ = hdf5_layout.read_direction_file(s.dir_file)
    names = list(net.state_dict())
    direction = dict(zip(names, (torch.as_tensor(d) for d in xdir)))
    assert torch.equal(direction['embed.weight'], direction['head.weight'])
    moved = fx.tied_tagger_model()
    moved.load_state_dict(torch.load(model, weights_only=True)['state_dict'])
    with torch.no_grad():
        moved.embed.weight.add_(direction['embed.weight'])
        moved.head.bias.add_(direction['head.bias'])
    dataset = fx.token_data('', True)
    mean, _ = token_losses(moved, dataset, dict(moved.named_parameters()), shift=False)
    assert s.values['train_loss'][1] == pytest.approx(mean, rel=1e-5)


def test_include_params_moves_only_the_named_parameters(tmp_path, capsys):
    net = fx.tagger_model()
    model = save(net, tmp_path / 'm.t7')
    common = [*TOKENS, '--model', f'{PKG}:tagger_model', '--model_file', model, '--loss_name', 'model',
              '--x=0:1:2']
    surface_run([*common, '--include_params', 'head.*', '--surf_file', tmp_path / 'inc.h5'], capsys)
    dir_file = str(tmp_path / 'm.t7_weights_include=head.*.h5')   # the subset is part of the default name
    xdir, _, _ = hdf5_layout.read_direction_file(dir_file)
    names = [n for n, _ in net.named_parameters()]
    for name, d in zip(names, xdir):
        assert np.any(d != 0) == name.startswith('head.'), name
    # Evaluated independently: only head.* moved.
    s = hdf5_layout.read_surface(str(tmp_path / 'inc.h5'))
    params = {n: p.detach() for n, p in net.named_parameters()}
    for name, d in zip(names, xdir):
        if name.startswith('head.'):
            params[name] = params[name] + torch.as_tensor(d)
    assert s.values['train_loss'][1] == pytest.approx(token_losses(net, fx.token_data('', True), params, False)[0],
                                                     rel=1e-5)
    # Excluding the rest selects the same tensors: the same directions, drawn from the same seed.
    surface_run([*common, '--exclude_params', 'embed.*', '--surf_file', tmp_path / 'exc.h5'], capsys)
    excluded, _, _ = hdf5_layout.read_direction_file(str(tmp_path / 'm.t7_weights_exclude=embed.*.h5'))
    for a, b in zip(xdir, excluded):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- data modes

@pytest.mark.parametrize('data', ['regression', 'digits'])
def test_streamed_and_resident_data_give_the_same_values(tmp_path, capsys, checkpoints, monkeypatch, data):
    monkeypatch.setattr(progress, 'LOG_INTERVAL_SECONDS', 0.0)   # stderr is not a terminal: a line per batch
    if data == 'regression':
        common = [*REGRESSION, '--model_file', save(fx.regression_model(), tmp_path / 'm.t7'), '--batch_size', '16']
    else:
        common = ['--dataset', 'digits', '--model', 'mlp', '--model_file', checkpoints['mlp'], '--threads', '1']
    common += ['--x=-1:1:3', '--xnorm', 'filter']   # both runs along the same (default) direction file
    surfaces = {}
    for mode in ('resident', 'stream'):
        captured = surface_run([*common, '--data_mode', mode, '--surf_file', tmp_path / f'{mode}.h5'], capsys)
        surfaces[mode] = hdf5_layout.read_surface(str(tmp_path / f'{mode}.h5'))
        if mode == 'stream':
            assert 'streaming training data' in captured.err or data == 'digits'   # the progress bar
    for name, values in surfaces['resident'].values.items():
        np.testing.assert_array_equal(values, surfaces['stream'].values[name], err_msg=name)


# ----------------------------------------------------------------------------- from Python

def test_python_api_equals_the_script_on_the_same_direction_file(tmp_path, capsys):
    net = fx.regression_model()
    model = save(net, tmp_path / 'm.t7')
    script_surface = tmp_path / 'script.h5'
    surface_run([*REGRESSION, '--model_file', model, '--x=-1:1:3', '--y=-1:1:3', '--xnorm', 'filter', '--ynorm',
                 'filter', '--batch_size', '16', '--surf_file', script_surface], capsys)
    dir_file = hdf5_layout.read_surface(str(script_surface)).dir_file
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    api = losslandscape.surface(net, fx.regression_data('', True), x='-1:1:3', y='-1:1:3', dir_file=dir_file,
                            loss_name=fx.squared_error, batch_size=16, threads=1, surf_file=str(tmp_path / 'api.h5'))
    script = hdf5_layout.read_surface(str(script_surface))
    for name in ('train_loss', 'train_abs_error'):
        np.testing.assert_array_equal(api.values[name], script.values[name])
    # The model is handed back at the centre, in the mode it came in.
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # Rerunning the same call resumes: nothing left to compute.
    losslandscape.surface(net, fx.regression_data('', True), x='-1:1:3', y='-1:1:3', dir_file=dir_file,
                      loss_name=fx.squared_error, batch_size=16, threads=1, surf_file=str(tmp_path / 'api.h5'))
    assert '0 points computed' in capsys.readouterr().out


def test_python_api_makes_its_own_directions_and_refuses_bad_keywords(tmp_path):
    from losslandscape.errors import UsageError
    net = fx.regression_model()
    surface = losslandscape.surface(net, fx.regression_data('', True), x='-1:1:2', loss_name=fx.squared_error,
                                xnorm='filter', threads=1, surf_file=str(tmp_path / 'api.h5'))
    assert surface.done['train_loss'].all() and os.path.exists(surface.dir_file)
    with pytest.raises(UsageError, match='unknown keyword'):
        losslandscape.surface(net, fx.regression_data('', True), xnrom='filter', surf_file=str(tmp_path / 'b.h5'))
    with pytest.raises(UsageError, match='xnorm'):
        losslandscape.surface(net, fx.regression_data('', True), xnorm='fliter', surf_file=str(tmp_path / 'b.h5'))
    with pytest.raises(UsageError, match='surf_file'):
        losslandscape.surface(net, fx.regression_data('', True), loss_name=fx.squared_error)
    assert not (tmp_path / 'b.h5').exists()


# ----------------------------------------------------------------------------- the Hessian

def test_hessian_of_a_custom_objective_matches_the_dense_hessian(tmp_path, capsys):
    net = fx.regression_model()
    model = save(net, tmp_path / 'm.t7')
    surf = tmp_path / 'eig.h5'
    code, err = call_main(plot_hessian_eigen.main, [*REGRESSION, '--model_file', model, '--x=0:0:1',
                                                    '--eig_tol', '1e-8', '--batch_size', '16', '--surf_file', surf],
                          capsys)
    assert code == 0, err
    s = hdf5_layout.read_surface(str(surf))
    # Dense: the mean squared error over the whole data set, against the dim > 1 weights.
    names = [n for n, p in net.named_parameters() if p.dim() > 1]
    shapes = [dict(net.named_parameters())[n].shape for n in names]
    batch = whole_dataset(fx.regression_data('', True))
    fixed = {n: p.detach() for n, p in net.named_parameters() if p.dim() <= 1}

    def mean_loss(flat):
        pieces, start = {}, 0
        for name, shape in zip(names, shapes):
            pieces[name] = flat[start:start + math.prod(shape)].view(shape)
            start += math.prod(shape)
        pred = functional_call(net, {**fixed, **pieces}, (batch['features'],)).squeeze(-1)
        return ((pred - batch['target']) ** 2).mean()
    flat = torch.cat([dict(net.named_parameters())[n].detach().reshape(-1) for n in names])
    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(mean_loss, flat).double())
    assert s.values['max_eig'][0] == pytest.approx(eigenvalues[-1].item(), rel=1e-4)
    assert s.values['min_eig'][0] == pytest.approx(eigenvalues[0].item(), rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------- bad input

REG = ['--dataset', f'{PKG}:regression_data', '--model', f'{PKG}:regression_model', '--model_file', '{d}/reg.t7',
       '--threads', '1', '--x=-1:1:2']
TOK = [*TOKENS, '--model', f'{PKG}:tagger_model', '--model_file', '{d}/tag.t7', '--x=-1:1:2']
BAD_INPUT = [
    ('loss returns a list', [*REG, '--loss_name', f'{PKG}:returns_a_list'], ['returned list', 'dict of batch sums']),
    ('loss misses count', [*REG, '--loss_name', f'{PKG}:misses_count'], ["no 'count'"]),
    ('loss not a scalar', [*REG, '--loss_name', f'{PKG}:non_scalar_loss'], ["'loss'", 'shape']),
    ('loss uses a reserved key', [*REG, '--loss_name', f'{PKG}:reserved_key'], ["'acc'", 'reserved']),
    ('loss returns a string', [*REG, '--loss_name', f'{PKG}:string_value'], ["'note'", 'str']),
    ('loss cannot be imported', [*REG, '--loss_name', 'nosuchpkg.losses:mse'], ['--loss_name', 'cannot import']),
    ('loss is not callable', [*REG, '--loss_name', f'{PKG}:FEATURES'], ['--loss_name', 'no callable']),
    ('built-in loss on dict batches', [*REG, '--loss_name', 'crossentropy'], ['(inputs, integer labels)']),
    ('causal_lm without tokens', [*REG, '--loss_name', 'causal_lm'], ['causal_lm', 'neither "labels"']),
    ('model loss from a plain model', [*REG, '--loss_name', 'model'], ['--loss_name model', 'cannot take']),
    ('include matches nothing', [*TOK, '--loss_name', 'model', '--include_params', 'head.*,decoder.*'],
     ['--include_params', "'decoder.*'", 'matches no parameter']),
    ('exclude leaves nothing', [*TOK, '--loss_name', 'model', '--exclude_params', '*'], ['leave no tensor']),
    ('include with a direction file', [*TOK, '--loss_name', 'model', '--include_params', 'head.*', '--dir_file',
                                       '{d}/tag.t7'], ['--dir_file', '--include_params']),
    ('unknown data mode', [*REG, '--loss_name', f'{PKG}:squared_error', '--data_mode', 'disk'],
     ['--data_mode', 'invalid choice']),
    ('negative workers', [*REG, '--loss_name', f'{PKG}:squared_error', '--workers', '-1'], ['--workers']),
    ('stacked points of a custom loss', [*REG, '--loss_name', f'{PKG}:squared_error', '--points_per_call', '2'],
     ['--points_per_call', 'built-in losses']),
    ('dataset factory returns no dataset', [*REG[2:], '--dataset', f'{PKG}:not_a_dataset', '--loss_name', 'model'],
     ['--dataset', 'sized torch Dataset']),
    ('sum of squares below what its sum needs', [*REG, '--loss_name', f'{PKG}:impossible_squares'],
     ["'loss_sq'", 'cannot give a standard error', 'at least']),
    ('sum of squares without its key', [*REG, '--loss_name', f'{PKG}:orphan_squares'],
     ["'distance_sq'", 'cannot give a standard error', "no 'distance'"]),
    ('more samples than the data', [*REG, '--loss_name', f'{PKG}:squared_error', '--samples', '51'],
     ['--samples 51', 'more than the 50 samples']),
]


@pytest.mark.parametrize('name,argv,words', BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_objective_data_and_subset_input(tmp_path, capsys, name, argv, words):
    save(fx.regression_model(), tmp_path / 'reg.t7')
    save(fx.tagger_model(), tmp_path / 'tag.t7')
    before = snapshot(tmp_path)
    code, err = call_main(plot_surface.main, [a.format(d=tmp_path) for a in argv], capsys)
    assert_one_line_error(code, err, words)
    assert snapshot(tmp_path) == before


def test_hessian_refuses_a_loss_it_cannot_differentiate(tmp_path, capsys, monkeypatch):
    save(fx.regression_model(), tmp_path / 'reg.t7')
    monkeypatch.setattr(fx, 'detached_loss', lambda model, batch: {
        'loss': float(fx.squared_error(model, batch)['loss']), 'count': len(batch['target'])}, raising=False)
    before = snapshot(tmp_path)
    code, err = call_main(plot_hessian_eigen.main, [a.format(d=tmp_path) for a in REG[:-1]] +
                          ['--x=0:0:1', '--loss_name', f'{PKG}:detached_loss'], capsys)
    assert code == 2 and 'the Hessian needs "loss" as a scalar tensor' in err and 'Traceback' not in err, err
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- trajectories, low precision

def test_trajectory_eval_stores_a_custom_objectives_values(tmp_path):
    from tests.conftest import run_script
    net = fx.regression_model()
    for epoch in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(1.0 - 0.1 * epoch)
        save(net, tmp_path / f'model_{epoch}.t7')
    run = run_script('plot_trajectory.py', '--dataset', f'{PKG}:regression_data', '--model', f'{PKG}:regression_model',
                     '--loss_name', f'{PKG}:squared_error', '--model_folder', tmp_path, '--max_epoch', '2',
                     '--eval', '--threads', '1')
    assert run.returncode == 0, run.stderr
    proj = hdf5_layout.read_projection_file(str(tmp_path / 'PCA_weights_save_epoch=1' / 'directions.h5_proj_cos.h5'))
    dataset = fx.regression_data('', True)
    for epoch in range(3):
        net = fx.regression_model()
        net.load_state_dict(torch.load(tmp_path / f'model_{epoch}.t7', weights_only=True)['state_dict'])
        loss, abs_error = regression_values(net, dataset, dict(net.named_parameters()))
        assert proj['train_loss'][epoch] == pytest.approx(loss, rel=1e-5)
        assert proj['train_abs_error'][epoch] == pytest.approx(abs_error, rel=1e-5)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_models_keep_their_centre_once_and_round_each_point_once(dtype):
    net = fx.regression_model().to(dtype)
    base = subsets.get_weights(net)
    # The centre is kept in the model's own dtype (exact: no float32 copy, which would double it).
    assert all(w.dtype == dtype for w in base)
    direction = normalization.random_direction(base, torch.Generator().manual_seed(0))
    # Many small steps out and back: each point is the centre plus x * d rounded once, so the
    # model returns to its stored weights exactly (in-place low-precision adds would drift).
    for x in [1e-3 * k for k in range(1, 200)] + [0.0]:
        moving.move(net, 'weights', base, direction, None, x)
    for p, w in zip(net.parameters(), base):
        assert p.dtype == dtype and torch.equal(p, w)
    moving.move(net, 'weights', base, direction, None, 0.37)
    for p, w, d in zip(net.parameters(), base, direction):
        assert torch.equal(p, (w.float() + 0.37 * d).to(dtype))   # formed in float32, rounded once


def test_auto_data_mode_streams_what_does_not_fit(monkeypatch):
    dataset = fx.regression_data('', True)
    assert isinstance(batch_sources.batch_source(dataset, '', True, 16, 'cpu', 'auto'), batch_sources.ResidentBatches)
    # With no memory to spare, the same data is streamed; the batches are the same.
    monkeypatch.setattr(batch_sources, 'RESIDENT_MEMORY_SHARE', 0.0)
    streamed = batch_sources.batch_source(dataset, '', True, 16, 'cpu', 'auto')
    assert isinstance(streamed, batch_sources.StreamedBatches)
    resident = batch_sources.batch_source(dataset, '', True, 16, 'cpu', 'resident')
    for a, b in zip(streamed.batches(), resident.batches(), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_python_hessian_eigen_equals_the_script(tmp_path, capsys):
    net = fx.regression_model()
    model = save(net, tmp_path / 'm.t7')
    common = ['--x=-0.5:0.5:2', '--xnorm', 'filter', '--eig_tol', '1e-6', '--batch_size', '16']
    code, err = call_main(plot_hessian_eigen.main, [*REGRESSION, '--model_file', model, *common,
                                                    '--surf_file', tmp_path / 'script.h5'], capsys)
    assert code == 0, err
    script = hdf5_layout.read_surface(str(tmp_path / 'script.h5'))
    api = losslandscape.hessian_eigen(net, fx.regression_data('', True), x='-0.5:0.5:2', dir_file=script.dir_file,
                                  loss_name=fx.squared_error, eig_tol=1e-6, batch_size=16, threads=1,
                                  surf_file=str(tmp_path / 'api.h5'))
    for name in ('max_eig', 'min_eig'):
        assert api.done[name].all()
        np.testing.assert_array_equal(api.values[name], script.values[name])
