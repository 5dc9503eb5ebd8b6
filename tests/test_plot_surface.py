"""plot_surface.py end to end on the digits data: grids, interpolation, weights vs states, resume,
the old file layout, custom models and data."""
import os

import h5py
import numpy as np
import pytest
import torch

from losslandscape import plot_surface
from losslandscape.compute import point_batching
from losslandscape.data import datasets
from losslandscape.directions import direction_files, subsets
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout
from losslandscape.models import loading
from losslandscape.objectives import objective
from losslandscape.training import evaluation
from tests.conftest import call_main

# A 1/4 split of the digits training set keeps every point at a few milliseconds.
DATA = ['--dataset', 'digits', '--data_split', '4', '--split_idx', '1', '--threads', '1']


def local_copy(tmp_path, path, name=None):
    """A private copy of a checkpoint, so the default direction file lands in this test's folder."""
    target = tmp_path / (name or os.path.basename(path))
    target.write_bytes(open(path, 'rb').read())
    return str(target)


def run(capsys, *argv):
    code, err = call_main(plot_surface.main, [*DATA, *argv], capsys)
    assert code == 0, err
    return err


def expected_loss(model_path, dir_file, x, y=None, dir_type='weights', loss_name='crossentropy', model='cnn_bn'):
    """The loss at (x, y) computed without the grid machinery, straight from the direction file."""
    net = loading.load('digits', model, model_path)
    xdir, ydir, _ = hdf5_layout.read_direction_file(dir_file)
    base = subsets.get_base(net, dir_type)
    target = [w.double() + x * torch.as_tensor(dx).double() + (0 if y is None else y * torch.as_tensor(dy).double())
              for w, dx, dy in zip(base, xdir, ydir or xdir)]
    with torch.no_grad():
        tensors = list(net.parameters()) if dir_type == 'weights' else list(net.state_dict().values())
        for t, v in zip(tensors, target):
            if t.is_floating_point():
                t.copy_(v)
    data = datasets.load_dataset('digits', '', True, False, 4, 1)
    return evaluation.evaluate(net, data, loss_name, 128)


def test_2d_nonsquare_grid_layout(tmp_path, checkpoints, capsys):
    surf = tmp_path / 'surf.h5'
    run(capsys, '--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), '--x=-1:1:4',
        '--y=0:0.5:3', '--xnorm', 'filter', '--xignore', 'biasbn', '--ynorm', 'filter', '--yignore', 'biasbn',
        '--surf_file', surf)
    s = hdf5_layout.read_surface(str(surf))
    assert s.values['train_loss'].shape == (3, 4)                     # (len(y), len(x))
    np.testing.assert_array_equal(s.xcoordinates, np.linspace(-1, 1, 4))
    np.testing.assert_array_equal(s.ycoordinates, np.linspace(0, 0.5, 3))   # a bound of 0 is valid
    assert all(s.done[n].all() for n in ('train_loss', 'train_acc'))
    for i, j in ((0, 0), (2, 1), (1, 3)):
        loss, acc = expected_loss(str(tmp_path / 'cnn_bn.t7'), s.dir_file, s.xcoordinates[j], s.ycoordinates[i])
        assert s.values['train_loss'][i, j] == pytest.approx(loss, rel=1e-5)
        assert s.values['train_acc'][i, j] == pytest.approx(acc)
    # The default direction file name follows the original scheme.
    assert os.path.basename(s.dir_file) == 'cnn_bn.t7_weights_xignore=biasbn_xnorm=filter_yignore=biasbn_ynorm=filter.h5'
    with h5py.File(s.dir_file, 'r') as f:
        assert sorted(f['xdirection'], key=int) == [str(i) for i in range(len(f['xdirection']))]


def test_default_surface_name_and_1d(tmp_path, checkpoints, capsys):
    model = tmp_path / 'model.t7'
    model.write_bytes(open(checkpoints['mlp'], 'rb').read())
    run(capsys, '--model', 'mlp', '--model_file', model, '--x=-0.5:0.5:5', '--xnorm', 'layer')
    dir_file = str(model) + '_weights_xnorm=layer.h5'
    surf = dir_file + '_[-0.5,0.5,5]_datasplit=4_splitidx=1.h5'
    s = hdf5_layout.read_surface(surf)
    assert s.ycoordinates is None and s.values['train_loss'].shape == (5,)
    loss, _ = expected_loss(str(model), dir_file, 0.5, model='mlp')
    assert s.values['train_loss'][4] == pytest.approx(loss, rel=1e-5)
    # At the centre the surface is the model's own loss.
    own, _ = expected_loss(str(model), dir_file, 0.0, model='mlp')
    assert s.values['train_loss'][2] == pytest.approx(own, rel=1e-6)


def test_interpolation_endpoints_are_the_two_models(tmp_path, checkpoints, capsys):
    surf = tmp_path / 'interp.h5'
    run(capsys, '--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']),
        '--model_file2', local_copy(tmp_path, checkpoints['cnn_bn_b']), '--x=-0.5:1.5:5', '--dir_type', 'states',
        '--surf_file', surf)
    assert os.path.exists(tmp_path / 'cnn_bn.t7_cnn_bn_b.t7_states.h5')   # the original's pair name
    s = hdf5_layout.read_surface(str(surf))
    data = datasets.load_dataset('digits', '', True, False, 4, 1)
    for key, x_index in (('cnn_bn', 1), ('cnn_bn_b', 3)):    # x = 0 and x = 1
        own_loss, own_acc = evaluation.evaluate(loading.load('digits', 'cnn_bn', checkpoints[key]), data)
        assert s.values['train_loss'][x_index] == pytest.approx(own_loss, rel=1e-5)
        assert s.values['train_acc'][x_index] == pytest.approx(own_acc)


@pytest.mark.parametrize('folders', [('a', 'a', 'a'), ('a', 'b', 'c/deep')], ids=['one-folder', 'three-folders'])
def test_plane_through_three_models_with_absolute_paths(tmp_path, checkpoints, capsys, folders):
    """(0, 0), (1, 0) and (0, 1) are the three models; the default direction file name is valid
    wherever the checkpoints lie (absolute paths, different and nested folders)."""
    paths = []
    for key, folder in zip(('cnn_bn', 'cnn_bn_b', 'cnn_bn_c'), folders):
        os.makedirs(tmp_path / folder, exist_ok=True)
        paths.append(local_copy(tmp_path / folder, checkpoints[key]))
    surf = tmp_path / 'plane.h5'
    run(capsys, '--model', 'cnn_bn', '--model_file', paths[0], '--model_file2', paths[1], '--model_file3', paths[2],
        '--x=0:1:2', '--y=0:1:2', '--dir_type', 'states', '--surf_file', surf)
    args = plot_surface.get_args_parser().parse_args(['--model_file', paths[0], '--model_file2', paths[1],
                                                      '--model_file3', paths[2], '--y=0:1:2', '--dir_type', 'states'])
    dir_file = direction_files.name_direction_file(direction_files.DirectionSpec.from_args(args))
    assert os.path.isfile(dir_file) and os.path.dirname(dir_file) in (str(tmp_path), str(tmp_path / 'a'))
    loss = hdf5_layout.read_surface(str(surf)).values['train_loss']
    data = datasets.load_dataset('digits', '', True, False, 4, 1)
    for key, (i, j) in (('cnn_bn', (0, 0)), ('cnn_bn_b', (0, 1)), ('cnn_bn_c', (1, 0))):   # Z[i, j] = f(x[j], y[i])
        own_loss, _ = evaluation.evaluate(loading.load('digits', 'cnn_bn', checkpoints[key]), data)
        assert loss[i, j] == pytest.approx(own_loss, rel=1e-5)


def test_weights_keep_bn_statistics_states_move_them(tmp_path, checkpoints, capsys):
    model = local_copy(tmp_path, checkpoints['cnn_bn'], 'm')
    common = ['--model', 'cnn_bn', '--model_file', model, '--x=-1:1:3', '--xnorm', 'filter']
    run(capsys, *common, '--dir_type', 'weights', '--surf_file', tmp_path / 'sw.h5')
    run(capsys, *common, '--dir_type', 'states', '--surf_file', tmp_path / 'ss.h5')
    os.rename(tmp_path / 'm_weights_xnorm=filter.h5', tmp_path / 'w.h5')
    os.rename(tmp_path / 'm_states_xnorm=filter.h5', tmp_path / 's.h5')
    net = loading.load('digits', 'cnn_bn', checkpoints['cnn_bn'])
    wx, _, _ = hdf5_layout.read_direction_file(str(tmp_path / 'w.h5'))
    sx, _, _ = hdf5_layout.read_direction_file(str(tmp_path / 's.h5'))
    assert len(wx) == len(list(net.parameters())) and len(sx) == len(net.state_dict())
    for x in (-1.0, 1.0):
        assert hdf5_layout.read_surface(str(tmp_path / 'ss.h5')).values['train_loss'][int(x + 1)] == \
            pytest.approx(expected_loss(checkpoints['cnn_bn'], str(tmp_path / 's.h5'), x, dir_type='states')[0], rel=1e-5)
    w_loss = hdf5_layout.read_surface(str(tmp_path / 'sw.h5')).values['train_loss']
    s_loss = hdf5_layout.read_surface(str(tmp_path / 'ss.h5')).values['train_loss']
    assert w_loss[1] == pytest.approx(s_loss[1], rel=1e-6)   # same centre
    assert not np.allclose(w_loss[[0, 2]], s_loss[[0, 2]])


def test_resume_computes_only_missing_and_matches_uninterrupted(tmp_path, checkpoints, capsys, monkeypatch):
    common = ['--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']), '--x=-1:1:4',
              '--y=-1:1:3', '--xnorm', 'filter', '--ynorm', 'filter']
    run(capsys, *common, '--surf_file', tmp_path / 'full.h5')

    real_evaluate, calls = objective.evaluate, []

    def crashing_evaluate(*a, **k):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError('simulated crash')
        return real_evaluate(*a, **k)
    monkeypatch.setattr(objective, 'evaluate', crashing_evaluate)
    with pytest.raises(RuntimeError, match='simulated crash'):
        plot_surface.main([*DATA, *common, '--surf_file', str(tmp_path / 'resumed.h5')])
    partial = hdf5_layout.read_surface(str(tmp_path / 'resumed.h5'))
    assert partial.done['train_loss'].sum() == 5 and np.isnan(partial.values['train_loss'][~partial.done['train_loss']]).all()

    calls.clear()
    monkeypatch.setattr(objective, 'evaluate', lambda *a, **k: (calls.append(1), real_evaluate(*a, **k))[1])
    run(capsys, *common, '--surf_file', tmp_path / 'resumed.h5')
    assert len(calls) == 12 - 5
    full, resumed = (hdf5_layout.read_surface(str(tmp_path / n)) for n in ('full.h5', 'resumed.h5'))
    for name in ('train_loss', 'train_acc'):
        np.testing.assert_array_equal(full.values[name], resumed.values[name])
    # A finished surface is left alone: nothing computed on a rerun.
    calls.clear()
    run(capsys, *common, '--surf_file', tmp_path / 'resumed.h5')
    assert calls == []


def test_values_that_look_like_old_sentinels_are_results(tmp_path, checkpoints, capsys, monkeypatch):
    """0, negative, NaN and inf are results, never 'missing' (the old code recomputed <= 0)."""
    fake = iter([{'loss': loss, 'acc': acc} for loss, acc in
                 [(0.0, 0.0), (-1.0, 5.0), (float('nan'), 0.0), (float('inf'), 0.0), (1.0, 10.0)]])
    monkeypatch.setattr(objective, 'evaluate', lambda *a, **k: next(fake))
    args = ['--model', 'mlp', '--model_file', local_copy(tmp_path, checkpoints['mlp']), '--x=-1:1:5',
            '--surf_file', tmp_path / 's.h5']
    run(capsys, *args)
    s = hdf5_layout.read_surface(str(tmp_path / 's.h5'))
    assert s.done['train_loss'].all()
    np.testing.assert_array_equal(s.values['train_loss'], [0.0, -1.0, np.nan, np.inf, 1.0])
    monkeypatch.setattr(objective, 'evaluate', lambda *a, **k: pytest.fail('recomputed a finished point'))
    run(capsys, *args)


def test_eval_test_adds_test_surfaces_to_existing_file(tmp_path, checkpoints, capsys):
    args = ['--model', 'mlp', '--model_file', local_copy(tmp_path, checkpoints['mlp']), '--x=-1:1:3',
            '--surf_file', tmp_path / 's.h5']
    run(capsys, *args)
    run(capsys, *args, '--eval_test')
    s = hdf5_layout.read_surface(str(tmp_path / 's.h5'))
    assert s.done['test_loss'].all() and np.isfinite(s.values['test_acc']).all()
    assert not np.array_equal(s.values['test_loss'], s.values['train_loss'])


def test_reads_original_layout_files(tmp_path, checkpoints, capsys):
    """A direction file and a surface file as the 2018 code wrote them: reused and resumed."""
    net = loading.load('digits', 'mlp', checkpoints['mlp'])
    old_dir = tmp_path / 'old_dir.h5'
    gen = torch.Generator().manual_seed(7)
    with h5py.File(old_dir, 'w') as f:   # groups of datasets "0".."N-1", no attributes
        for axis in ('xdirection', 'ydirection'):
            for i, p in enumerate(net.parameters()):
                f[f'{axis}/{i}'] = torch.randn(p.shape, generator=gen).numpy() * 0.1
    old_surf = tmp_path / 'old_surf.h5'
    coords = np.linspace(-1, 1, 3)
    with h5py.File(old_surf, 'w') as f:  # square grid, -1 = not computed yet, dir_file as a dataset
        f['dir_file'] = str(old_dir)
        f['xcoordinates'], f['ycoordinates'] = coords, coords
        done_loss = np.full((3, 3), -1.0)
        f['train_loss'], f['train_acc'] = done_loss, done_loss
    run(capsys, '--model', 'mlp', '--model_file', checkpoints['mlp'], '--x=-1:1:3', '--y=-1:1:3',
        '--dir_file', old_dir, '--surf_file', old_surf)
    s = hdf5_layout.read_surface(str(old_surf))
    assert s.done['train_loss'].all()
    loss, _ = expected_loss(checkpoints['mlp'], str(old_dir), coords[2], coords[0], model='mlp')
    assert s.values['train_loss'][0, 2] == pytest.approx(loss, rel=1e-5)


def test_mse_uses_the_models_own_number_of_outputs(tmp_path, capsys):
    """A custom 3-class model on a custom 3-class dataset, given as package.module:factory."""
    torch.manual_seed(0)
    net = __import__('tests.fixtures.custom', fromlist=['x']).three_class_model()
    path = tmp_path / 'custom.t7'
    torch.save(net.state_dict(), path)    # a bare state_dict
    code, err = call_main(plot_surface.main, [
        '--dataset', 'tests.fixtures.custom:three_class_data', '--model', 'tests.fixtures.custom:three_class_model',
        '--model_file', path, '--x=-1:1:3', '--loss_name', 'mse', '--surf_file', tmp_path / 's.h5',
        '--threads', '1'], capsys)
    assert code == 0, err
    s = hdf5_layout.read_surface(str(tmp_path / 's.h5'))
    from tests.fixtures.custom import three_class_data
    data = three_class_data(root='', train=True)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    probs = torch.softmax(net(x), dim=1)
    expected = ((probs - torch.nn.functional.one_hot(y, 3)) ** 2).mean().item()
    assert s.values['train_loss'][1] == pytest.approx(expected, rel=1e-5)


def test_data_split_parts_are_disjoint_and_cover():
    parts = [datasets.split_indices(100, 3, i) for i in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    np.testing.assert_array_equal(parts[1], datasets.split_indices(100, 3, 1))  # fixed seed
    with pytest.raises(UsageError, match='larger than'):
        datasets.split_indices(10, 11, 0)


def test_checkpoint_with_dataparallel_prefix_loads(tmp_path, checkpoints):
    state = loading.read_state_dict(checkpoints['mlp'])
    path = tmp_path / 'dp.t7'
    torch.save({'state_dict': {'module.' + k: v for k, v in state.items()}, 'epoch': 3, 'acc': 50.0}, path)
    net = loading.load('digits', 'mlp', str(path))
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])


def test_cifar10_folder_read_offline_like_torchvision(tmp_path, capsys, monkeypatch):
    """Our resident uint8 tensors, normalised per batch, equal torchvision's ToTensor + Normalize
    on the same cifar-10-batches-py folder; the checksum mismatch of fake batches only warns."""
    import torchvision
    import torchvision.transforms as T

    from losslandscape._testing.fake_cifar10 import write_fake_cifar10
    write_fake_cifar10(str(tmp_path), num_train=20, num_test=5)

    # torchvision refuses batches whose checksums differ from the official ones: let it read the fakes.
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda *a, **k: True)
    for raw in (False, True):
        with pytest.warns(UserWarning, match='checksums'):
            ours = datasets.load_dataset('cifar10', str(tmp_path), train=True, raw_data=raw)
        steps = [T.ToTensor()] + ([] if raw else [T.Normalize(datasets.CIFAR10_MEAN, datasets.CIFAR10_STD)])
        theirs = torchvision.datasets.CIFAR10(str(tmp_path), train=True, transform=T.Compose(steps))
        x, y = next(ours.batches(100))
        expected = torch.stack([theirs[i][0] for i in range(len(theirs))])
        torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
        assert y.tolist() == [theirs[i][1] for i in range(len(theirs))]
    assert ours.inputs.dtype == torch.uint8    # 1 byte per pixel resident, normalised per batch
    # And the whole script runs on it, on a zoo model.
    torch.manual_seed(0)
    from losslandscape.models.cifar10.zoo import MODELS
    torch.save({'state_dict': MODELS['resnet20']().state_dict()}, tmp_path / 'r20.t7')
    code, err = call_main(plot_surface.main, ['--datapath', tmp_path, '--model', 'resnet20', '--model_file',
                                              tmp_path / 'r20.t7', '--x=-1:1:2', '--xnorm', 'filter',
                                              '--xignore', 'biasbn', '--eval_test', '--threads', '1'], capsys)
    assert code == 0, err
    surf = str(tmp_path / 'r20.t7_weights_xignore=biasbn_xnorm=filter.h5_[-1.0,1.0,2].h5')
    assert hdf5_layout.read_surface(surf).done['test_acc'].all()


def test_recreated_direction_file_is_not_mixed_with_old_surface(tmp_path, checkpoints, capsys):
    model = local_copy(tmp_path, checkpoints['mlp'])
    args = ['--model', 'mlp', '--model_file', model, '--x=-1:1:3', '--xnorm', 'filter', '--surf_file', tmp_path / 's.h5']
    run(capsys, *args)
    dir_file = model + '_weights_xnorm=filter.h5'
    # Adding a y direction to a 1D direction file keeps the x values: the 1D surface stays valid.
    run(capsys, *args[:-2], '--y=-1:1:2')   # same direction file name: no y options
    xdirection, ydirection, _ = hdf5_layout.read_direction_file(dir_file)
    assert ydirection is not None
    run(capsys, *args, '--eval_test')       # resumed: the 1D surface gains test values
    # Recreated with the same values (e.g. plot_trajectory rerun on the same checkpoints): accepted.
    os.remove(dir_file)
    run(capsys, *args[:-2], '--y=-1:1:2')
    run(capsys, *args)
    # Recreated with other values (e.g. PCA of new checkpoints): refused, for 1D and 2D surfaces.
    hdf5_layout.write_direction_file(dir_file, [2 * a for a in xdirection], ydirection)
    for argv in (args, [*args[:-2], '--y=-1:1:2']):
        code, err = call_main(plot_surface.main, [*DATA, *argv], capsys)
        assert code == 2 and 'recreated since with other values' in err
    # Only the y direction changed (a retrained --model_file3): the 2D surface is refused, the 1D one is not.
    hdf5_layout.write_direction_file(dir_file, xdirection, [2 * a for a in ydirection])
    run(capsys, *args)
    code, err = call_main(plot_surface.main, [*DATA, *args[:-2], '--y=-1:1:2'], capsys)
    assert code == 2 and 'recreated since with other values' in err


def test_surface_of_first_versions_keeps_resuming(tmp_path, checkpoints, capsys):
    """Direction files of the suite's first versions carried a random id at creation, which their
    surfaces recorded instead of the content hash: they stay valid, also after adding a y direction."""
    model = local_copy(tmp_path, checkpoints['mlp'])
    args = ['--model', 'mlp', '--model_file', model, '--x=-1:1:3', '--xnorm', 'filter', '--surf_file', tmp_path / 's.h5']
    run(capsys, *args)
    dir_file = model + '_weights_xnorm=filter.h5'
    tag = '"0123456789abcdef0123456789abcdef"'
    for path in (dir_file, str(tmp_path / 's.h5')):   # as the first versions wrote them
        with h5py.File(path, 'a') as f:
            f.attrs[hdf5_layout.DIRECTION_ID] = tag
    run(capsys, *args[:-2], '--y=-1:1:2')
    with h5py.File(dir_file, 'r') as f:
        assert f.attrs[hdf5_layout.DIRECTION_ID] == tag
    run(capsys, *args, '--eval_test')
    assert hdf5_layout.read_surface(str(tmp_path / 's.h5')).done['test_loss'].all()
    # A different tag is another file's: refused.
    with h5py.File(dir_file, 'a') as f:
        f.attrs[hdf5_layout.DIRECTION_ID] = '"ffffffffffffffffffffffffffffffff"'
    with h5py.File(str(tmp_path / 's.h5'), 'a') as f:
        f.attrs[hdf5_layout.DIRECTION_ID] = tag
    code, err = call_main(plot_surface.main, [*DATA, *args], capsys)
    assert code == 2 and 'recreated since' in err


def test_original_nonsquare_file_is_read_in_grid_orientation(tmp_path):
    """The 2018 code stored a non-square grid as an (nx, ny) array filled in (ny, nx) order."""
    x, y = np.linspace(-1, 1, 4), np.linspace(0, 1, 3)
    xx, yy = np.meshgrid(x, y)
    truth = xx * 10 + yy            # f(x[j], y[i]) at [i, j]
    with h5py.File(tmp_path / 'old.h5', 'w') as f:
        f['dir_file'] = 'dirs.h5'
        f['xcoordinates'], f['ycoordinates'] = x, y
        f['train_loss'] = truth.ravel().reshape(len(x), len(y))
    s = hdf5_layout.read_surface(str(tmp_path / 'old.h5'))
    np.testing.assert_array_equal(s.values['train_loss'], truth)


@pytest.mark.parametrize('lever', [['--channels_last'], ['--compile'], ['--batch_size', '32'], ['--fold_bn'],
                                   ['--fold_bn', '--channels_last'], ['--fold_bn', '--dir_type', 'states']],
                         ids=['channels_last', 'compile', 'small batches', 'fold_bn', 'fold_bn channels_last',
                              'fold_bn states'])
def test_speed_levers_give_the_same_surface(tmp_path, checkpoints, capsys, lever):
    """The levers of benchmarks/RESULTS.md change only the speed (and float rounding)."""
    model = local_copy(tmp_path, checkpoints['cnn_bn'])
    common = ['--model', 'cnn_bn', '--model_file', model, '--x=-1:1:3', '--y=0:1:2', '--xnorm', 'filter',
              '--ynorm', 'filter']
    states = ['--dir_type', 'states'] if 'states' in lever else []
    run(capsys, *common, *states, '--surf_file', tmp_path / 'plain.h5')
    run(capsys, *common, *lever, '--surf_file', tmp_path / 'lever.h5')
    plain, fast = (hdf5_layout.read_surface(str(tmp_path / n)) for n in ('plain.h5', 'lever.h5'))
    np.testing.assert_allclose(fast.values['train_loss'], plain.values['train_loss'], rtol=1e-4)
    np.testing.assert_allclose(fast.values['train_acc'], plain.values['train_acc'], atol=0.6)   # a rounding flip of a sample or two


@pytest.mark.parametrize('dir_type', ['weights', 'states'])
@pytest.mark.parametrize('loss_name', ['crossentropy', 'mse'])
def test_points_per_call_matches_one_point_at_a_time(tmp_path, checkpoints, capsys, monkeypatch, dir_type, loss_name):
    model = local_copy(tmp_path, checkpoints['cnn_bn'])
    common = ['--model', 'cnn_bn', '--model_file', model, '--x=-1:1:3', '--y=0:1:2', '--xnorm', 'filter',
              '--xignore', 'biasbn', '--ynorm', 'filter', '--yignore', 'biasbn', '--dir_type', dir_type,
              '--loss_name', loss_name, '--eval_test']
    run(capsys, *common, '--surf_file', tmp_path / 'one.h5')
    from losslandscape.compute import point_batching
    real, calls = point_batching.evaluate_stacked, []
    monkeypatch.setattr(point_batching, 'evaluate_stacked',
                        lambda net, tensors, *a: (calls.append(len(next(iter(tensors.values())))), real(net, tensors, *a))[1])
    run(capsys, *common, '--points_per_call', '4', '--surf_file', tmp_path / 'four.h5')
    # 6 points: 4 + 2, each on train and test data, the first call's data sets after the centre's
    # own pass (one stacked point), which every point's rise is paired with.
    assert calls == [1, 4, 1, 4, 2, 2]
    one, four = (hdf5_layout.read_surface(str(tmp_path / n)) for n in ('one.h5', 'four.h5'))
    for name in ('train_loss', 'test_loss'):
        assert four.done[name].all()
        np.testing.assert_allclose(four.values[name], one.values[name], rtol=1e-5)
    for name in ('train_acc', 'test_acc'):
        np.testing.assert_allclose(four.values[name], one.values[name], atol=0.6)


def test_amp_evaluates_in_bfloat16_close_to_float32(tmp_path, checkpoints, capsys):
    model = local_copy(tmp_path, checkpoints['cnn_bn'])
    common = ['--model', 'cnn_bn', '--model_file', model, '--x=-1:1:3', '--xnorm', 'filter']
    run(capsys, *common, '--surf_file', tmp_path / 'fp32.h5')
    run(capsys, *common, '--amp', '--surf_file', tmp_path / 'bf16.h5')
    fp32, bf16 = (hdf5_layout.read_surface(str(tmp_path / n)).values['train_loss'] for n in ('fp32.h5', 'bf16.h5'))
    assert not np.array_equal(bf16, fp32)                  # autocast really ran in bfloat16 ...
    np.testing.assert_allclose(bf16, fp32, rtol=3e-2)      # ... and bf16 keeps ~3 significant digits


def test_weights_interpolation_warns_about_batchnorm_statistics(tmp_path, checkpoints, capsys):
    args = ['--model', 'cnn_bn', '--model_file', local_copy(tmp_path, checkpoints['cnn_bn']),
            '--model_file2', local_copy(tmp_path, checkpoints['cnn_bn_b']), '--x=0:1:2']
    assert 'use --dir_type states' in run(capsys, *args, '--surf_file', tmp_path / 'w.h5')
    assert 'warning' not in run(capsys, *args, '--dir_type', 'states', '--surf_file', tmp_path / 's.h5')


class _NaNForClassZeroInputs(torch.nn.Module):
    """Outputs NaN logits for some samples (as a diverged network would) and perfect ones otherwise."""

    def __init__(self, nan_rows):
        super().__init__()
        self.nan_rows, self.scale = nan_rows, torch.nn.Parameter(torch.ones(()))

    def forward(self, inputs):
        logits = torch.zeros(len(inputs), 10)
        logits[:, 0] = 1.0   # class 0 everywhere: argmax of a NaN row would also say 0 on some backends
        if self.nan_rows:
            logits[: self.nan_rows] = float('nan')
        return logits * self.scale


@pytest.mark.parametrize('nan_rows', [0, 1])
def test_accuracy_is_nan_where_outputs_are_nan(nan_rows):
    """A point whose outputs hold NaN has a NaN loss; its accuracy must not be the share of the
    class argmax happens to pick for NaN rows."""
    data = datasets.load_dataset('digits', '', True, False, 4, 1)
    share_of_class_0 = 100.0 * (data.targets == 0).sum().item() / len(data)
    loss, acc = evaluation.evaluate(_NaNForClassZeroInputs(nan_rows), data)
    if nan_rows:
        assert np.isnan(loss) and np.isnan(acc)
    else:
        assert np.isfinite(loss) and acc == pytest.approx(share_of_class_0)


@pytest.mark.parametrize('points_per_call', [1, 3])
def test_adding_test_values_keeps_and_skips_the_training_values(tmp_path, checkpoints, capsys, monkeypatch,
                                                                points_per_call):
    """--eval_test on a finished train-only surface evaluates the test set alone; stored training
    values (a marker here) stay, and the result equals a run that did both from the start."""
    model = local_copy(tmp_path, checkpoints['cnn_bn'])
    common = ['--model', 'cnn_bn', '--model_file', model, '--x=-1:1:3', '--y=-1:1:2', '--xnorm', 'filter',
              '--ynorm', 'filter', '--points_per_call', str(points_per_call)]
    both = tmp_path / 'both.h5'
    run(capsys, *common, '--eval_test', '--surf_file', both)
    later = tmp_path / 'later.h5'
    run(capsys, *common, '--surf_file', later)
    with h5py.File(later, 'a') as f:
        f['train_loss'][0, 0] = 99.5
    evaluated = []   # the number of samples of each data set evaluated
    real_evaluate, real_stacked = objective.evaluate, point_batching.evaluate_stacked
    monkeypatch.setattr(objective, 'evaluate', lambda net, data, *a: (evaluated.append(data.num_samples),
                                                                     real_evaluate(net, data, *a))[1])
    monkeypatch.setattr(point_batching, 'evaluate_stacked', lambda net, t, data, *a: (
        evaluated.append(data.num_samples), real_stacked(net, t, data, *a))[1])
    run(capsys, *common, '--eval_test', '--surf_file', later)
    test_size = len(datasets.load_dataset('digits', '', False, False, 4, 1))
    assert evaluated and set(evaluated) == {test_size}
    a, b = hdf5_layout.read_surface(str(both)), hdf5_layout.read_surface(str(later))
    assert b.values['train_loss'][0, 0] == 99.5
    for name in ('test_loss', 'test_acc', 'train_acc'):
        np.testing.assert_array_equal(a.values[name], b.values[name])
