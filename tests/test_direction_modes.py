"""Where a run's directions live (--dir_mode resident, stream, seed, auto), direction files in seed
form, parameter-subset files that store only the subset, and directions between checkpoints made
one tensor at a time (directions.sources, directions.seeded, directions.direction_files)."""
import json
import os

import h5py
import numpy as np
import pytest
import torch

from losslandscape import plot_surface
from losslandscape.directions import direction_files, seeded, sources, subsets
from losslandscape.io import hdf5_layout
from losslandscape.models import loading
from tests.conftest import assert_one_line_error, call_main, snapshot
from tests.test_plot_surface import expected_loss, local_copy, run

GRID_2D = ['--x=-1:1:3', '--y=-1:1:3', '--xnorm', 'filter', '--ynorm', 'filter']


def surface_values(path):
    return hdf5_layout.read_surface(str(path)).values['train_loss']


@pytest.fixture
def model_file(tmp_path, checkpoints):
    return local_copy(tmp_path, checkpoints['cnn_bn'])


def test_stream_auto_and_resident_give_the_same_surface(tmp_path, model_file, capsys, monkeypatch):
    run(capsys, '--model', 'cnn_bn', '--model_file', model_file, *GRID_2D, '--dir_mode', 'resident',
        '--surf_file', tmp_path / 'resident.h5')
    dir_file = hdf5_layout.read_surface(str(tmp_path / 'resident.h5')).dir_file
    common = ['--model', 'cnn_bn', '--model_file', model_file, '--dir_file', dir_file, '--x=-1:1:3', '--y=-1:1:3']
    run(capsys, *common, '--dir_mode', 'stream', '--surf_file', tmp_path / 'stream.h5')
    opened = []
    real_open = sources.open_directions
    monkeypatch.setattr(sources, 'RESIDENT_BUDGET', 0.0)   # nothing fits: auto streams
    monkeypatch.setattr(sources, 'open_directions', lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1])
    run(capsys, *common, '--surf_file', tmp_path / 'auto.h5')
    assert [s.mode for s in opened] == ['stream']
    resident = surface_values(tmp_path / 'resident.h5')
    np.testing.assert_array_equal(surface_values(tmp_path / 'stream.h5'), resident)
    np.testing.assert_array_equal(surface_values(tmp_path / 'auto.h5'), resident)
    loss, _ = expected_loss(model_file, dir_file, 1.0, -1.0)
    assert resident[0, 2] == pytest.approx(loss, rel=1e-5)


def seed_file_run(tmp_path, model_file, capsys, mode='seed', name='seed'):
    """A 2D surface along the seed-form file that --dir_mode seed makes (named '..._seedform.h5'),
    reused in ``mode`` when it exists."""
    surf, dir_file = tmp_path / f'{name}.h5', model_file + '_weights_xnorm=filter_ynorm=filter_seedform.h5'
    reuse = ['--dir_file', dir_file] if os.path.exists(dir_file) else []
    run(capsys, '--model', 'cnn_bn', '--model_file', model_file, *GRID_2D, *reuse, '--dir_mode', mode,
        '--surf_file', surf)
    assert hdf5_layout.read_surface(str(surf)).dir_file == dir_file
    return surf


def test_seed_form_holds_a_recipe_only_and_regenerates_the_values_it_records(tmp_path, model_file, capsys):
    surf = seed_file_run(tmp_path, model_file, capsys)
    dir_file = hdf5_layout.read_surface(str(surf)).dir_file
    with h5py.File(dir_file, 'r') as f:
        datasets = []
        f.visititems(lambda name, node: datasets.append(name) if isinstance(node, h5py.Dataset) else None)
        recipe = json.loads(f.attrs[hdf5_layout.SEED_RECIPE_ATTR])
    assert datasets == [] and os.path.getsize(dir_file) < 2 ** 20   # no tensors, whatever the model
    assert recipe['device_type'] == 'cpu' and recipe['xnorm'] == 'filter'
    # The values regenerated, written as an ordinary (tensor) file, hash to the id the seed file
    # records, and a surface along that file is the seed-mode surface, bit for bit.
    net = loading.load('digits', 'cnn_bn', model_file)
    base = subsets.get_base(net, 'weights')
    x, y = sources.read_whole(dir_file, net, base, True)
    stored = str(tmp_path / 'materialized.h5')
    hdf5_layout.write_direction_file(stored, [t.numpy() for t in x], [t.numpy() for t in y])
    for with_y in (False, True):
        assert hdf5_layout.direction_content_id(stored, with_y) == hdf5_layout.direction_content_id(dir_file, with_y)
    run(capsys, '--model', 'cnn_bn', '--model_file', model_file, '--dir_file', stored, '--x=-1:1:3', '--y=-1:1:3',
        '--dir_mode', 'stream', '--surf_file', tmp_path / 'materialized_surface.h5')
    np.testing.assert_array_equal(surface_values(tmp_path / 'materialized_surface.h5'), surface_values(surf))
    # Filter-normalised: each filter of the regenerated x direction has its weights' norm.
    w, d = base[0], x[0]
    np.testing.assert_allclose(d.view(d.shape[0], -1).norm(dim=1), w.view(w.shape[0], -1).norm(dim=1), rtol=1e-5)
    # Held (resident) from the recipe: the same surface again.
    again = seed_file_run(tmp_path, model_file, capsys, mode='resident', name='seed_resident')
    np.testing.assert_array_equal(surface_values(again), surface_values(surf))


@pytest.mark.parametrize('tamper, words', [
    (lambda attrs: {**attrs, hdf5_layout.CONTENT_IDS_ATTR: json.dumps({'x': '0' * 32, 'xy': '0' * 32})},
     ['regenerate to other values']),
    (lambda attrs: {**attrs, hdf5_layout.SEED_RECIPE_ATTR: json.dumps(
        {**json.loads(attrs[hdf5_layout.SEED_RECIPE_ATTR]), 'device_type': 'cuda'})}, ['made on cuda']),
])
def test_a_regeneration_that_differs_is_refused(tmp_path, model_file, capsys, tamper, words):
    surf = seed_file_run(tmp_path, model_file, capsys)
    dir_file = hdf5_layout.read_surface(str(surf)).dir_file
    with h5py.File(dir_file, 'r+') as f:
        for key, value in tamper(dict(f.attrs)).items():
            f.attrs[key] = value
    before = snapshot(tmp_path)
    code, err = call_main(plot_surface.main, ['--dataset', 'digits', '--data_split', '4', '--split_idx', '1',
                                              '--model', 'cnn_bn', '--model_file', model_file, '--dir_file', dir_file,
                                              '--x=-1:1:3', '--y=-1:1:3', '--surf_file', tmp_path / 'other.h5'], capsys)
    assert_one_line_error(code, err, words)
    assert snapshot(tmp_path) == before


def test_a_subset_direction_file_holds_only_the_subset(tmp_path, model_file, capsys):
    surf = tmp_path / 'subset.h5'
    run(capsys, '--model', 'cnn_bn', '--model_file', model_file, *GRID_2D, '--include_params', 'classifier.*',
        '--dir_mode', 'stream', '--surf_file', surf)
    dir_file = hdf5_layout.read_surface(str(surf)).dir_file
    net = loading.load('digits', 'cnn_bn', model_file)
    names = [n for n, _ in net.named_parameters()]
    kept_bytes = sum(4 * p.numel() for n, p in net.named_parameters() if n.startswith('classifier.'))
    with h5py.File(dir_file, 'r') as f:
        stored = sum(f[axis][k].id.get_storage_size() for axis in ('xdirection', 'ydirection') for k in f[axis])
    assert stored == 2 * kept_bytes
    # Readers of the old layout still see every entry, the others as zeros.
    x, y, _ = hdf5_layout.read_direction_file(dir_file)
    for name, d in zip(names, x):
        assert d.shape == dict(net.named_parameters())[name].shape
        assert np.any(d) == name.startswith('classifier.')
    loss, _ = expected_loss(model_file, dir_file, -1.0, 1.0)
    assert surface_values(surf)[2, 0] == pytest.approx(loss, rel=1e-5)
    # A resident run along it gives the same surface.
    run(capsys, '--model', 'cnn_bn', '--model_file', model_file, '--dir_file', dir_file, '--x=-1:1:3',
        '--y=-1:1:3', '--dir_mode', 'resident', '--surf_file', tmp_path / 'subset_resident.h5')
    np.testing.assert_array_equal(surface_values(tmp_path / 'subset_resident.h5'), surface_values(surf))


def test_a_direction_between_checkpoints_is_made_per_tensor(tmp_path, checkpoints):
    """Two .safetensors checkpoints: the direction is read tensor by tensor from the second one,
    never loading it into a second model, and equals other - centre."""
    from safetensors.torch import save_file
    paths = {}
    for name, seed_checkpoint in (('a', checkpoints['cnn_bn']), ('b', checkpoints['cnn_bn_b'])):
        paths[name] = str(tmp_path / f'{name}.safetensors')
        save_file(loading.read_state_dict(seed_checkpoint), paths[name])
    net = loading.load('digits', 'cnn_bn', paths['a'])
    base = subsets.get_base(net, 'weights')

    def no_second_model(path, flag):
        raise AssertionError('the second checkpoint was loaded whole')
    spec = direction_files.DirectionSpec(model_file=paths['a'], model_file2=paths['b'])
    direction_files.setup_direction_file(spec, str(tmp_path / 'line.h5'), net, base, no_second_model)
    x, _, _ = hdf5_layout.read_direction_file(str(tmp_path / 'line.h5'))
    other = loading.load('digits', 'cnn_bn', paths['b'])
    for d, w, o in zip(x, base, other.parameters()):
        np.testing.assert_array_equal(d, (o.detach().double() - w.double()).float().numpy())


@pytest.mark.parametrize('extra, words', [
    (['--dir_mode', 'seed', '--model_file2', 'B'], ['--dir_mode seed', '--model_file2']),
    (['--dir_mode', 'stream', '--points_per_call', '2'], ['--points_per_call', 'stream']),
])
def test_mode_conflicts_are_one_line(tmp_path, model_file, capsys, extra, words):
    extra = [model_file if a == 'B' else a for a in extra]
    before = snapshot(tmp_path)
    code, err = call_main(plot_surface.main, ['--dataset', 'digits', '--model', 'cnn_bn', '--model_file', model_file,
                                              '--x=-1:1:3', *extra], capsys)
    assert_one_line_error(code, err, words)
    assert snapshot(tmp_path) == before


def test_a_mode_the_file_cannot_serve_is_one_line(tmp_path, model_file, capsys):
    surf = seed_file_run(tmp_path, model_file, capsys)
    seed_dir = hdf5_layout.read_surface(str(surf)).dir_file
    stored = str(tmp_path / 'stored.h5')
    net = loading.load('digits', 'cnn_bn', model_file)
    direction_files.setup_direction_file(direction_files.DirectionSpec(is_2d=True), stored, net,
                                         subsets.get_base(net, 'weights'), None)
    for dir_file, mode, words in ((seed_dir, 'stream', ['seed form']), (stored, 'seed', ['holds tensors'])):
        before = snapshot(tmp_path)
        code, err = call_main(plot_surface.main, ['--dataset', 'digits', '--model', 'cnn_bn', '--model_file',
                                                  model_file, '--dir_file', dir_file, '--x=-1:1:3', '--y=-1:1:3',
                                                  '--dir_mode', mode, '--surf_file', tmp_path / 'new.h5'], capsys)
        assert_one_line_error(code, err, words)
        assert snapshot(tmp_path) == before


def test_a_bfloat16_model_keeps_one_centre_and_matches_float32_arithmetic(tmp_path):
    """The centre of a low-precision model is its own tensors' copy (exact); a point is formed in
    float32 per tensor and rounded once, whatever the mode."""
    net = loading.load('digits', 'cnn_bn').to(torch.bfloat16)
    base = subsets.get_base(net, 'weights')
    assert all(w.dtype == torch.bfloat16 for w in base)
    dir_file = str(tmp_path / 'd.h5')
    direction_files.setup_direction_file(direction_files.DirectionSpec(xnorm='filter'), dir_file, net, base, None)
    streamed = sources.open_directions(dir_file, 'stream', net, base, False, 'cpu')
    from losslandscape.directions import moving
    moving.move(net, 'weights', base, streamed, x=0.3)
    x, _, _ = hdf5_layout.read_direction_file(dir_file)
    for p, w, d in zip(net.parameters(), base, x):
        assert torch.equal(p, (w.float() + 0.3 * torch.from_numpy(d)).to(torch.bfloat16))
    streamed.close()


def test_blocks_of_rows_move_the_model_as_whole_tensors_do(tmp_path, model_file, capsys, monkeypatch):
    """Streamed and regenerated directions are applied a block of rows at a time; with blocks of a
    row or two the surface is the one of whole tensors, and a seed-form file keeps the blocks it
    was made with (its seeds depend on them) whatever the suite's default is later."""
    run(capsys, '--model', 'cnn_bn', '--model_file', model_file, *GRID_2D, '--dir_mode', 'resident',
        '--surf_file', tmp_path / 'whole.h5')
    dir_file = hdf5_layout.read_surface(str(tmp_path / 'whole.h5')).dir_file
    monkeypatch.setattr(sources, 'BLOCK_ELEMENTS', 100)   # conv rows of 72 and 9, classifier rows of 64
    assert len(sources.row_blocks((16, 8, 3, 3))) == 16 and len(sources.row_blocks((10, 64))) == 10
    run(capsys, '--model', 'cnn_bn', '--model_file', model_file, '--dir_file', dir_file, '--x=-1:1:3', '--y=-1:1:3',
        '--dir_mode', 'stream', '--surf_file', tmp_path / 'blocks.h5')
    np.testing.assert_array_equal(surface_values(tmp_path / 'blocks.h5'), surface_values(tmp_path / 'whole.h5'))
    small = seed_file_run(tmp_path, model_file, capsys, name='seed_small_blocks')
    monkeypatch.setattr(sources, 'BLOCK_ELEMENTS', 1 << 22)
    again = seed_file_run(tmp_path, model_file, capsys, name='seed_default_blocks')
    np.testing.assert_array_equal(surface_values(again), surface_values(small))


@pytest.mark.parametrize('norm', ['layer', 'dlayer', 'filter', 'weight'])
def test_regenerated_blocks_follow_the_normalisation_of_whole_tensors(norm, monkeypatch):
    monkeypatch.setattr(sources, 'BLOCK_ELEMENTS', 100)
    net = loading.load('digits', 'cnn_bn')
    base = subsets.get_base(net, 'weights')
    spec = direction_files.DirectionSpec(xnorm=norm, xignore='biasbn')
    seeded_dirs = seeded.SeededDirections(seeded.make_recipe(spec, 'cpu'), net, base)
    w, d = base[3], seeded_dirs.entry('x', 3)   # features.1.0.weight (16, 8, 3, 3): 16 blocks
    if norm == 'layer':
        assert float(d.norm()) == pytest.approx(float(w.norm()), rel=1e-5)
    elif norm == 'dlayer':
        assert float(d.norm()) == pytest.approx(1.0, rel=1e-5)
    elif norm == 'filter':
        np.testing.assert_allclose(d.view(16, -1).norm(dim=1), w.view(16, -1).norm(dim=1), rtol=1e-5)
    else:   # elementwise: d / w is the standard normal draw, the same as unnormalised blocks
        raw = seeded.SeededDirections(seeded.make_recipe(direction_files.DirectionSpec(), 'cpu'), net, base)
        torch.testing.assert_close(d, raw.entry('x', 3) * w)
    assert seeded_dirs.entry('x', 1) is None   # a BatchNorm weight under biasbn
    # Blocks are independent draws: another block count gives other values.
    monkeypatch.setattr(sources, 'BLOCK_ELEMENTS', 1 << 22)
    recipe = seeded.make_recipe(spec, 'cpu')
    assert not torch.equal(seeded.SeededDirections(recipe, net, base).entry('x', 3), d)


def test_the_other_scripts_take_a_seed_form_file(tmp_path, model_file, capsys):
    """plot_hessian_eigen.py along a seed-form file (regenerated at each point), and plot_2D.py
    drawing a surface made along one."""
    from losslandscape import plot_2D, plot_hessian_eigen
    surf = seed_file_run(tmp_path, model_file, capsys)
    dir_file = hdf5_layout.read_surface(str(surf)).dir_file
    code, err = call_main(plot_hessian_eigen.main, ['--dataset', 'digits', '--data_split', '4', '--split_idx', '1',
                                                    '--model', 'cnn_bn', '--model_file', model_file, '--dir_file',
                                                    dir_file, '--x=-1:1:3', '--y=-1:1:3', '--surf_file', surf,
                                                    '--threads', '1'], capsys)
    assert code == 0, err
    stored = hdf5_layout.read_surface(str(surf))
    assert stored.done['max_eig'].all() and np.all(np.isfinite(stored.values['max_eig']))
    written = plot_2D.main(['--surf_file', str(surf)])
    assert written and all(os.path.exists(path) for path in written)
