"""plot_trajectory.py and the PCA / projection of projection.py, on a few epochs of the digits data."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from losslandscape import plot_trajectory
from losslandscape import train as train_main
from losslandscape.directions import normalization, projection, subsets
from losslandscape.io import hdf5_layout
from losslandscape.models import loading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 4


def train(save, model='cnn_bn', epochs=EPOCHS):
    return train_main.main(['--dataset', 'digits', '--model', model, '--epochs', str(epochs),
                            '--save', str(save), '--threads', '1'])


def trajectory(folder, *extra, model='cnn_bn', max_epoch=EPOCHS):
    """Run plot_trajectory.py; return (projection file, direction file)."""
    proj_file = plot_trajectory.main(['--dataset', 'digits', '--model', model, '--model_folder', folder,
                                      '--max_epoch', str(max_epoch), '--threads', '1', *extra])
    return proj_file, proj_file.rsplit('_proj_', 1)[0]


def checkpoint_vectors(folder, model, epochs, dir_type):
    """Each checkpoint as one float64 vector, read with plain torch (independent of projection.py)."""
    vectors = []
    for epoch in epochs:
        state = torch.load(os.path.join(folder, f'model_{epoch}.t7'), weights_only=True)['state_dict']
        net = loading.build('digits', model)
        net.load_state_dict(state)
        tensors = list(net.parameters()) if dir_type == 'weights' else list(net.state_dict().values())
        vectors.append(torch.cat([t.detach().double().flatten() for t in tensors]).numpy())
    return np.stack(vectors)


@pytest.fixture(scope='module')
def run_folder(tmp_path_factory):
    return train(tmp_path_factory.mktemp('nets'))


def test_pca_files_names_and_final_at_origin(run_folder):
    proj_file, dir_file = trajectory(run_folder)
    assert dir_file == os.path.join(run_folder, 'PCA_weights_save_epoch=1', 'directions.h5')
    assert proj_file == dir_file + '_proj_cos.h5'
    proj = hdf5_layout.read_projection_file(proj_file)
    x, y = proj[hdf5_layout.PROJ_XCOORD], proj[hdf5_layout.PROJ_YCOORD]
    assert x.shape == y.shape == (EPOCHS + 1,)
    assert (x[-1], y[-1]) == (0.0, 0.0)                      # the final model is the origin
    assert np.hypot(x[0], y[0]) > 0.1                       # and the start is not
    assert os.path.isfile(proj_file + '.png')


def test_explained_variance_matches_numpy_svd(run_folder):
    _, dir_file = trajectory(run_folder)
    xdirection, ydirection, extras = hdf5_layout.read_direction_file(dir_file)
    vectors = checkpoint_vectors(run_folder, 'cnn_bn', range(EPOCHS + 1), 'weights')
    matrix = vectors - vectors[-1]
    centered = matrix - matrix.mean(axis=0)                 # scikit-learn centres the columns
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    np.testing.assert_allclose(extras[hdf5_layout.EXPLAINED_VARIANCE_RATIO], s[:2] ** 2 / np.sum(s ** 2), rtol=1e-6)
    np.testing.assert_allclose(extras[hdf5_layout.SINGULAR_VALUES], s[:2], rtol=1e-6)
    np.testing.assert_allclose(extras[hdf5_layout.EXPLAINED_VARIANCE], s[:2] ** 2 / (len(matrix) - 1), rtol=1e-6)
    for direction, component in zip((xdirection, ydirection), vt[:2]):
        assert abs(projection.cosine_similarity(projection.flatten(direction), component)) == pytest.approx(1, abs=1e-5)
    # With orthonormal directions 'cos' is the orthogonal projection: lstsq agrees.
    cos = hdf5_layout.read_projection_file(dir_file + '_proj_cos.h5')
    lstsq_file, _ = trajectory(run_folder, '--proj_method', 'lstsq')
    lstsq = hdf5_layout.read_projection_file(lstsq_file)
    for key in (hdf5_layout.PROJ_XCOORD, hdf5_layout.PROJ_YCOORD):
        np.testing.assert_allclose(lstsq[key], cos[key], atol=1e-4)


def test_states_directions_and_num_batches_tracked(run_folder):
    proj_file, dir_file = trajectory(run_folder, '--dir_type', 'states')
    assert dir_file == os.path.join(run_folder, 'PCA_states_save_epoch=1', 'directions.h5')
    xdirection, ydirection, _ = hdf5_layout.read_direction_file(dir_file)
    net = loading.build('digits', 'cnn_bn')
    state = net.state_dict()
    assert len(xdirection) == len(state)                   # every state_dict entry, buffers included
    for (key, tensor), dx, dy in zip(state.items(), xdirection, ydirection):
        assert dx.shape == tuple(tensor.shape)
        if key.endswith('num_batches_tracked'):
            assert dx == 0 and dy == 0                      # a step counter is no direction
    running_mean = list(state).index('features.0.1.running_mean')
    assert np.any(xdirection[running_mean] != 0)           # BN statistics do move without --ignore
    normalization.check_direction_fits(xdirection, subsets.get_states(net), dir_file, 'x')
    proj = hdf5_layout.read_projection_file(proj_file)
    assert (proj[hdf5_layout.PROJ_XCOORD][-1], proj[hdf5_layout.PROJ_YCOORD][-1]) == (0.0, 0.0)


@pytest.mark.parametrize('dir_type', ['weights', 'states'])
def test_biasbn_zeroes_dim_le_1_entries(run_folder, dir_type):
    _, dir_file = trajectory(run_folder, '--dir_type', dir_type, '--ignore', 'biasbn')
    assert os.path.basename(os.path.dirname(dir_file)) == f'PCA_{dir_type}_ignore=biasbn_save_epoch=1'
    xdirection, ydirection, extras = hdf5_layout.read_direction_file(dir_file)
    for direction in (xdirection, ydirection):
        assert all(not np.any(d) for d in direction if d.ndim <= 1)
        assert all(np.any(d) for d in direction if d.ndim > 1)
    # The PCA input had them zeroed too: the ratios are those of the dim > 1 entries alone.
    vectors = checkpoint_vectors(run_folder, 'cnn_bn', range(EPOCHS + 1), dir_type)
    net = loading.build('digits', 'cnn_bn')
    tensors = list(net.parameters()) if dir_type == 'weights' else list(net.state_dict().values())
    keep = np.concatenate([np.full(t.numel(), t.dim() > 1) for t in tensors])
    matrix = (vectors - vectors[-1])[:, keep]
    s = np.linalg.svd(matrix - matrix.mean(axis=0), compute_uv=False)
    np.testing.assert_allclose(extras[hdf5_layout.EXPLAINED_VARIANCE_RATIO], s[:2] ** 2 / np.sum(s ** 2), rtol=1e-6)


def test_given_dir_file_and_eval(run_folder, tmp_path):
    net = loading.build('digits', 'cnn_bn')
    base = subsets.get_weights(net)
    generator = torch.Generator().manual_seed(3)
    dir_file = str(tmp_path / 'random.h5')
    hdf5_layout.write_direction_file(dir_file, normalization.random_direction(base, generator),
                                     normalization.random_direction(base, generator))
    proj_file, _ = trajectory(run_folder, '--dir_file', dir_file, '--proj_method', 'lstsq', '--eval')
    assert proj_file == dir_file + '_proj_lstsq.h5'
    proj = hdf5_layout.read_projection_file(proj_file)
    xdirection, ydirection, _ = hdf5_layout.read_direction_file(dir_file)
    a = np.stack([projection.flatten(xdirection), projection.flatten(ydirection)], axis=1)
    vectors = checkpoint_vectors(run_folder, 'cnn_bn', range(EPOCHS + 1), 'weights')
    expected = np.linalg.lstsq(a, (vectors - vectors[-1]).T, rcond=None)[0]
    np.testing.assert_allclose(proj[hdf5_layout.PROJ_XCOORD], expected[0], atol=1e-6)
    np.testing.assert_allclose(proj[hdf5_layout.PROJ_YCOORD], expected[1], atol=1e-6)
    # --eval: each checkpoint's own loss, so the untrained model_0 is at chance and the last is not.
    loss, acc = proj[hdf5_layout.TRAIN_LOSS], proj[hdf5_layout.TRAIN_ACC]
    assert loss.shape == acc.shape == (EPOCHS + 1,)
    assert loss[0] == pytest.approx(np.log(10), abs=0.2) and loss[-1] < loss[0] and acc[-1] > 50


def test_checkpoint_list_always_ends_with_max_epoch():
    assert plot_trajectory.checkpoint_epochs(0, 10, 3) == [0, 3, 6, 9, 10]
    assert plot_trajectory.checkpoint_epochs(2, 6, 2) == [2, 4, 6]
    assert plot_trajectory.checkpoint_epochs(5, 5, 1) == [5]


def test_missing_checkpoint_exits_2_with_one_line(run_folder):
    result = subprocess.run([sys.executable, 'plot_trajectory.py', '--dataset', 'digits', '--model', 'cnn_bn',
                             '--model_folder', run_folder, '--max_epoch', '7'],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'error: checkpoint' in lines[0] and 'model_5.t7' in lines[0]


def test_too_few_checkpoints_for_pca(run_folder):
    from losslandscape.errors import UsageError
    with pytest.raises(UsageError, match='at least 3 checkpoints'):
        trajectory(run_folder, '--start_epoch', '3')


def test_quick_start_train_trajectory_surface(tmp_path):
    from losslandscape import plot_surface
    folder = train(tmp_path, epochs=3)                                              # 1. train
    proj_file, dir_file = trajectory(folder, '--ignore', 'biasbn', max_epoch=3)     # 2. PCA + path
    proj = hdf5_layout.read_projection_file(proj_file)
    span = lambda c: f'{1.2 * np.max(np.abs(c)):.3f}'
    x, y = span(proj[hdf5_layout.PROJ_XCOORD]), span(proj[hdf5_layout.PROJ_YCOORD])
    plot_surface.main(['--dataset', 'digits', '--model', 'cnn_bn', '--model_file',           # 3. surface
                       os.path.join(folder, 'model_3.t7'), '--dir_file', dir_file, f'--x=-{x}:{x}:5',
                       f'--y=-{y}:{y}:5', '--proj_file', proj_file, '--plot', '--threads', '1'])
    folder_files = os.listdir(os.path.dirname(dir_file))
    surf_files = [f for f in folder_files if f.startswith('directions.h5_[') and f.endswith('].h5')]
    assert len(surf_files) == 1
    surface = hdf5_layout.read_surface(os.path.join(os.path.dirname(dir_file), surf_files[0]))
    assert surface.done[hdf5_layout.TRAIN_LOSS].all()
    assert os.path.isfile(f'{proj_file}_{hdf5_layout.TRAIN_LOSS}_2dcontour_proj.png')


def test_printed_surface_command_uses_the_labels_the_path_was_evaluated_on(tmp_path, capsys):
    """A --label_corrupt_prob run trains on its saved labels; the contours plot_trajectory suggests
    must be of the same loss as the --eval colours of the path: at the final model they agree."""
    import shlex

    from losslandscape import plot_surface
    folder = train_main.main(['--dataset', 'digits', '--model', 'mlp', '--epochs', '3', '--save', str(tmp_path),
                              '--threads', '1', '--label_corrupt_prob', '0.5'])
    capsys.readouterr()
    proj_file, _ = trajectory(folder, '--eval', model='mlp', max_epoch=3)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith('contours under it: ')]
    assert len(printed) == 1
    argv = shlex.split(printed[0].split(': ', 1)[1])
    assert argv[:2] == ['python', 'plot_surface.py'] and '--train_labels' in argv
    argv = [a for a in argv[2:] if not a.startswith(('--x=', '--y='))]
    for flag in ('--proj_file', '--plot'):   # one point, at the final model: nothing to draw
        i = argv.index(flag)
        del argv[i:i + (2 if flag == '--proj_file' else 1)]
    surf = str(tmp_path / 'centre.h5')
    plot_surface.main([*argv, '--x=0:0:1', '--y=0:0:1', '--surf_file', surf, '--threads', '1'])
    centre = hdf5_layout.read_surface(surf).values[hdf5_layout.TRAIN_LOSS][0, 0]
    assert centre == pytest.approx(hdf5_layout.read_projection_file(proj_file)[hdf5_layout.TRAIN_LOSS][-1], rel=1e-6)


def test_ignore_with_a_given_dir_file_is_refused(run_folder, tmp_path):
    from losslandscape.errors import UsageError
    with pytest.raises(UsageError, match='--ignore'):
        trajectory(run_folder, '--dir_file', str(tmp_path / 'any.h5'), '--ignore', 'biasbn')


def test_a_seed_form_dir_file_projects_like_its_regenerated_tensors(run_folder, tmp_path):
    """plot_trajectory.py --dir_file takes a direction file in seed form: the projection is the
    one on the tensors it regenerates for the final model."""
    from losslandscape.directions import direction_files, seeded, sources
    net = loading.build('digits', 'cnn_bn')
    loading.load_checkpoint(net, os.path.join(run_folder, f'model_{EPOCHS}.t7'))
    base = subsets.get_weights(net)
    seed_file = str(tmp_path / 'seedform.h5')
    seeded.write_seed_file(seed_file, direction_files.DirectionSpec(xnorm='filter', ynorm='filter', is_2d=True),
                           net, base, 'cpu', {})
    x, y = sources.read_whole(seed_file, net, base, True)
    tensor_file = str(tmp_path / 'tensors.h5')
    hdf5_layout.write_direction_file(tensor_file, [t.numpy() for t in x], [t.numpy() for t in y])
    seeded_proj = hdf5_layout.read_projection_file(trajectory(run_folder, '--dir_file', seed_file)[0])
    tensor_proj = hdf5_layout.read_projection_file(trajectory(run_folder, '--dir_file', tensor_file)[0])
    for key in (hdf5_layout.PROJ_XCOORD, hdf5_layout.PROJ_YCOORD):
        np.testing.assert_array_equal(seeded_proj[key], tensor_proj[key])
        assert np.any(seeded_proj[key])
