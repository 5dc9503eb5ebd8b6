"""Curves between two trained models (train_curve.py, plot_surface.py --curve_file, --recompute_bn,
plot_1D.py --compare): the parametrisation, BatchNorm recomputation, the barrier a trained curve
removes, exact ends, kill -9 and resume, the plane through a curve, bad input."""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from losslandscape import plot_1D, plot_surface, train_curve
from losslandscape import train as cifar10_main
from losslandscape.curves import bn_statistics, connecting_curves
from losslandscape.data import batch_sources, datasets
from losslandscape.errors import UsageError
from losslandscape.figures.common import loss_barrier
from losslandscape.io import hdf5_layout
from losslandscape.models import loading
from losslandscape.objectives import objective
from tests.conftest import call_main, run_script, snapshot

DIGITS = ['--dataset', 'digits', '--threads', '1']
# Short, but enough for the digits CNNs: about a second of training.
CURVE_TRAINING = ['--epochs', '10', '--lr', '0.05', '--batch_size', '64']
CROSSENTROPY = objective.resolve('crossentropy')


def ok(main, argv, capsys):
    code, err = call_main(main, [*DIGITS, *argv], capsys)
    assert code == 0, err
    return err


@pytest.fixture(scope='module')
def end_models(tmp_path_factory):
    """Two digits CNNs trained as the demo trains them, from different seeds."""
    folder = tmp_path_factory.mktemp('ends')
    paths = []
    for seed in (0, 1):
        run_folder = cifar10_main.main(['--dataset', 'digits', '--model', 'cnn_bn', '--epochs', '6', '--batch_size',
                                        '64', '--lr', '0.05', '--rand_seed', str(seed), '--idx', str(seed),
                                        '--save', str(folder), '--threads', '1'])
        paths.append(os.path.join(run_folder, 'model_6.t7'))
    return paths


@pytest.fixture(scope='module')
def trained(end_models, tmp_path_factory):
    """A Bezier curve trained between the end models, evaluated at 21 values of t, and the straight
    line between them with BatchNorm statistics recomputed at the same points."""
    folder = tmp_path_factory.mktemp('curve')
    curve_file, curve_surface, line_surface = (str(folder / name) for name in ('curve.h5', 'curve_surf.h5', 'line.h5'))
    torch.set_num_threads(1)
    assert train_curve.main([*DIGITS, '--model', 'cnn_bn', '--model_file', end_models[0], '--model_file2',
                             end_models[1], '--curve_file', curve_file, *CURVE_TRAINING]) == 0
    plot_surface.main([*DIGITS, '--model', 'cnn_bn', '--curve_file', curve_file, '--x=0:1:21', '--eval_test',
                       '--surf_file', curve_surface])
    plot_surface.main([*DIGITS, '--model', 'cnn_bn', '--model_file', end_models[0], '--model_file2', end_models[1],
                       '--x=0:1:21', '--recompute_bn', '--eval_test', '--surf_file', line_surface])
    return {'curve_file': curve_file, 'curve_surface': curve_surface, 'line_surface': line_surface,
            'folder': folder}


def digits_source(batch_size=128):
    return batch_sources.batch_source('digits', '', True, batch_size, 'cpu', 'resident')


# ----------------------------------------------------------------------------- the parametrisation

@pytest.mark.parametrize('curve_type', connecting_curves.CURVE_TYPES)
@pytest.mark.parametrize('num_bends', [2, 3, 5])
def test_ends_are_exact_and_straight_bends_make_the_straight_line(curve_type, num_bends):
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator)]
    end = [torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator)]
    curve = connecting_curves.Curve(curve_type, ['w', 'b'], [start, *connecting_curves.straight_bends(start, end, num_bends), end])
    for t, tensors in ((0.0, start), (1.0, end)):
        assert connecting_curves.coefficients(curve_type, num_bends, t) == [1.0 if i == (t == 1.0) * (num_bends - 1) else 0.0
                                                                 for i in range(num_bends)]
        assert all(w is x for w, x in zip(curve.weights(t), tensors))   # the end tensors themselves
    for t in (0.1, 0.5, 0.77):
        assert sum(connecting_curves.coefficients(curve_type, num_bends, t)) == pytest.approx(1.0)
        for w, a, b in zip(curve.weights(t), start, end):
            torch.testing.assert_close(w, a + t * (b - a), rtol=1e-5, atol=1e-6)


def test_bezier_is_the_bernstein_form_and_polychain_passes_through_its_bends():
    assert connecting_curves.coefficients('bezier', 3, 0.25) == pytest.approx([0.5625, 0.375, 0.0625])
    assert connecting_curves.coefficients('bezier', 4, 0.5) == pytest.approx([0.125, 0.375, 0.375, 0.125])
    assert connecting_curves.coefficients('polychain', 3, 0.5) == [0.0, 1.0, 0.0]
    assert connecting_curves.coefficients('polychain', 3, 0.75) == pytest.approx([0.0, 0.5, 0.5])
    assert connecting_curves.coefficients('polychain', 3, 1.5) == pytest.approx([0.0, -1.0, 2.0])   # the last segment, extended
    x, y = connecting_curves.plane_coordinates('bezier', [0.0, 0.5, 1.0])
    assert x.tolist() == [0.0, 0.25, 1.0] and y.tolist() == [0.0, 0.5, 0.0]


def test_recomputed_statistics_are_those_of_the_whole_training_set(checkpoints):
    """Batches of unequal size (the last of 100 holds 38) weigh what they hold: the running mean is the
    mean of the layer's input over every sample, the running variance the size-weighted mean of
    the batch variances; dropout-free eval mode elsewhere leaves the model's outputs deterministic."""
    net = loading.load('digits', 'cnn_bn', checkpoints['cnn_bn'])
    bn = net.features[0][1]
    inputs = []
    hook = bn.register_forward_hook(lambda module, args, out: inputs.append(args[0].detach()))
    source = digits_source(batch_size=100)
    bn_statistics.recompute(net, source, CROSSENTROPY)
    hook.remove()
    assert not net.training and not bn.training and bn.momentum == 0.1
    sizes = torch.tensor([float(x.shape[0]) for x in inputs])
    assert sizes.tolist()[-1] < 100
    every = torch.cat(inputs)
    torch.testing.assert_close(bn.running_mean, every.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    batch_vars = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in inputs])
    torch.testing.assert_close(bn.running_var, (batch_vars * sizes[:, None]).sum(0) / sizes.sum(), rtol=1e-5, atol=1e-6)
    before = objective.evaluate(net, source, CROSSENTROPY)
    bn_statistics.recompute(net, source, CROSSENTROPY)
    assert objective.evaluate(net, source, CROSSENTROPY) == before


# ----------------------------------------------------------------------------- what a curve does

def test_trained_curve_removes_the_straight_lines_barrier(trained, capsys):
    """The issue's measure: over 21 points the curve's highest training loss exceeds the higher end's
    by less than a quarter of what the straight line's does (both with recomputed statistics)."""
    curve = hdf5_layout.read_surface(trained['curve_surface']).values['train_loss']
    line = hdf5_layout.read_surface(trained['line_surface']).values['train_loss']
    x = np.linspace(0, 1, 21)
    curve_barrier, line_barrier = loss_barrier(x, curve), loss_barrier(x, line)
    print(f'barrier: straight line {line_barrier:.4f}, Bezier curve {curve_barrier:.4f}')
    assert line_barrier > 0.3                      # there is a barrier to remove
    assert curve_barrier < line_barrier / 4
    # Both run between the same two models.
    assert curve[0] == line[0] and curve[-1] == pytest.approx(line[-1], rel=1e-5)

    written = plot_1D.main(['--surf_file', trained['curve_surface'], '--compare', trained['line_surface']])
    assert all(os.path.getsize(p) > 0 for p in written) and written[0].endswith('_1d_compare.pdf')
    out = capsys.readouterr().out
    assert f'Bezier curve: training loss barrier {curve_barrier:.4g}' in out
    assert f'straight line: training loss barrier {line_barrier:.4g}' in out


def test_curve_ends_are_the_end_models_with_recomputed_statistics(trained, end_models):
    record = hdf5_layout.read_curve_file(trained['curve_file'])
    assert record.curve_type == 'bezier' and record.num_bends == 3 and record.epochs_done == 10
    assert record.history['epoch'].tolist() == list(range(1, 11))
    net = loading.load('digits', 'cnn_bn', end_models[0])
    curve, _ = connecting_curves.load_curve(trained['curve_file'], net,
                                 lambda path, flag: loading.load('digits', 'cnn_bn', path, flag))
    surface = hdf5_layout.read_surface(trained['curve_surface'])
    test_source = batch_sources.batch_source('digits', '', False, 128, 'cpu', 'resident')
    end_values = record.attrs[hdf5_layout.CURVE_END_VALUES]   # train_curve's, in its batches of 64
    for index, t, path in ((0, 0.0, end_models[0]), (-1, 1.0, end_models[1])):
        end = loading.load('digits', 'cnn_bn', path)
        assert all(torch.equal(w, p) for w, p in zip(curve.weights(t), end.parameters()))
        for batch_size, values, label in ((128, None, None), (64, end_values, f't = {t:g}')):
            end = loading.load('digits', 'cnn_bn', path)
            source = digits_source(batch_size)
            stored = objective.evaluate(end, source, CROSSENTROPY)
            bn_statistics.recompute(end, source, CROSSENTROPY)
            recomputed = objective.evaluate(end, source, CROSSENTROPY)
            assert stored['loss'] != recomputed['loss']   # the recomputation did change the statistics
            if values is None:   # plot_surface's batches of 128: the surface at t = 0 and t = 1
                assert surface.values['train_loss'][index] == recomputed['loss']
                assert surface.values['train_acc'][index] == recomputed['acc']
                assert surface.values['test_loss'][index] == objective.evaluate(end, test_source, CROSSENTROPY)['loss']
            else:
                assert values[f'{label}, stored statistics']['train_loss'] == stored['loss']
                assert values[f'{label}, recomputed statistics']['train_loss'] == recomputed['loss']
    midpoint = end_values['curve, t = 0.5']['train_loss']
    assert midpoint == pytest.approx(surface.values['train_loss'][10], rel=1e-2)
    assert end_values['straight line, t = 0.5']['train_loss'] > 4 * midpoint


def test_polychain_of_two_bends_is_the_straight_line_and_extends_past_its_ends(end_models, trained, capsys):
    """--num_bends 2 trains nothing: the curve is the line, and its values equal the interpolation
    between --model_file and --model_file2 with --recompute_bn; a polychain may leave [0, 1]."""
    curve_file, surf = str(trained['folder'] / 'line_curve.h5'), str(trained['folder'] / 'line_curve_surf.h5')
    ok(train_curve.main, ['--model', 'cnn_bn', '--model_file', end_models[0], '--model_file2', end_models[1],
                          '--curve', 'polychain', '--num_bends', '2', '--curve_file', curve_file, *CURVE_TRAINING],
       capsys)
    ok(plot_surface.main, ['--model', 'cnn_bn', '--curve_file', curve_file, '--x=-0.5:1.5:9', '--surf_file', surf],
       capsys)
    along_curve = hdf5_layout.read_surface(surf).values['train_loss']
    line = hdf5_layout.read_surface(trained['line_surface']).values['train_loss']
    np.testing.assert_allclose(along_curve[2:7], line[::5], rtol=1e-4)   # t = 0, 0.25, ..., 1
    assert np.isfinite(along_curve).all() and along_curve[0] > along_curve[2]


# ----------------------------------------------------------------------------- kill -9 and resume

def test_resume_after_kill_ends_as_an_uninterrupted_run(trained, end_models, tmp_path):
    curve_file = str(tmp_path / 'curve.h5')
    argv = [*DIGITS, '--model', 'cnn_bn', '--model_file', end_models[0], '--model_file2', end_models[1],
            '--curve_file', curve_file, *CURVE_TRAINING]
    killed = run_script('train_curve.py', *argv, env={'LANDSCAPE_KILL_AT': 'file:3'})
    assert killed.returncode == -9, killed.stderr
    assert hdf5_layout.read_curve_file(curve_file).epochs_done == 3
    resumed = run_script('train_curve.py', *argv)
    assert resumed.returncode == 0, resumed.stderr
    assert 'resuming after epoch 3 of 10' in resumed.stdout
    done, reference = hdf5_layout.read_curve_file(curve_file), hdf5_layout.read_curve_file(trained['curve_file'])
    for key in ('bends', 'momentum'):
        ours, theirs = getattr(done, key), getattr(reference, key)
        assert [sorted(b) for b in ours] == [sorted(b) for b in theirs]
        assert all(np.array_equal(b[name], c[name]) for b, c in zip(ours, theirs) for name in b)
    for key, values in reference.history.items():
        assert np.array_equal(done.history[key], values)
    assert done.attrs[hdf5_layout.CURVE_END_VALUES] == reference.attrs[hdf5_layout.CURVE_END_VALUES]
    assert sorted(os.listdir(tmp_path)) == ['curve.h5']   # no lock, no temporary left behind


# ----------------------------------------------------------------------------- the plane of a curve

def test_plane_through_ends_and_bend_holds_the_curve(trained, end_models, capsys):
    """--model_file3 CURVE_FILE: the y direction is bend - A, so (1, 0) is B and (0, 1) the bend;
    the curve's points are written beside the surface at (t^2, 2t(1 - t))."""
    surf = str(trained['folder'] / 'plane.h5')
    ok(plot_surface.main, ['--model', 'cnn_bn', '--model_file', end_models[0], '--model_file2', end_models[1],
                           '--model_file3', trained['curve_file'], '--x=0:1:2', '--y=0:1:2', '--recompute_bn',
                           '--data_split', '4', '--surf_file', surf], capsys)
    _, ydirection, _ = hdf5_layout.read_direction_file(hdf5_layout.read_surface(surf).dir_file)
    record = hdf5_layout.read_curve_file(trained['curve_file'])
    start = loading.load('digits', 'cnn_bn', end_models[0])
    for d, (name, p) in zip(ydirection, start.named_parameters()):
        np.testing.assert_allclose(d, record.bends[0][name] - p.detach().numpy(), rtol=0, atol=1e-6)
    proj = hdf5_layout.read_projection_file(surf + '_curve_proj.h5')
    t = np.linspace(0, 1, plot_surface.CURVE_PROJECTION_POINTS)
    np.testing.assert_allclose(proj['proj_xcoord'], t ** 2, atol=1e-12)
    np.testing.assert_allclose(proj['proj_ycoord'], 2 * t * (1 - t), atol=1e-12)
    loss = hdf5_layout.read_surface(surf).values['train_loss']
    end = loading.load('digits', 'cnn_bn', end_models[1])
    source = batch_sources.batch_source('digits', '', True, 128, 'cpu', 'resident', data_split=4)
    bn_statistics.recompute(end, source, CROSSENTROPY)
    assert loss[0, 1] == pytest.approx(objective.evaluate(end, source, CROSSENTROPY)['loss'], rel=1e-4)


def test_recomputed_and_stored_statistics_are_never_mixed_in_one_surface(trained, end_models, capsys):
    surf = str(trained['folder'] / 'mixed.h5')
    common = ['--model', 'cnn_bn', '--model_file', end_models[0], '--model_file2', end_models[1], '--x=0:1:3',
              '--data_split', '4', '--surf_file', surf]
    ok(plot_surface.main, common, capsys)
    before = open(surf, 'rb').read()
    code, err = call_main(plot_surface.main, [*DIGITS, *common, '--recompute_bn'], capsys)
    assert code == 2 and 'recompute_bn=False' in err and open(surf, 'rb').read() == before


def test_curve_surface_resumes_and_refuses_a_retrained_curve(trained, capsys):
    curve_file, surf = str(trained['folder'] / 'retrained.h5'), str(trained['folder'] / 'retrained_surf.h5')
    shutil.copy(trained['curve_file'], curve_file)
    argv = ['--model', 'cnn_bn', '--curve_file', curve_file, '--x=0:1:3', '--data_split', '4', '--surf_file', surf]
    ok(plot_surface.main, argv, capsys)
    plot_surface.main([*DIGITS, *argv])
    assert ': 0 points computed' in capsys.readouterr().out   # resumed: nothing left to do
    with h5py.File(curve_file, 'a') as f:   # the same curve file, trained again: other bends
        bend = f[hdf5_layout.CURVE_BENDS]['0']['classifier.bias']
        bend[...] = bend[()] + 1
    before = open(surf, 'rb').read()
    code, err = call_main(plot_surface.main, [*DIGITS, *argv], capsys)
    assert code == 2 and 'other directions' in err and open(surf, 'rb').read() == before


def test_python_api_recomputes_statistics_and_hands_the_model_back(checkpoints, tmp_path):
    import losslandscape
    net = loading.load('digits', 'cnn_bn', checkpoints['cnn_bn'])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = datasets.load_dataset('digits', '', True)
    dataset = torch.utils.data.TensorDataset(data.normalize(data.inputs), data.targets)
    surface = losslandscape.surface(net, dataset, x='0:0:1', recompute_bn=True, batch_size=128, threads=1,
                                surf_file=str(tmp_path / 's.h5'))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    bn_statistics.recompute(net, batch_sources.batch_source(dataset, '', True, 128, 'cpu', 'resident'), CROSSENTROPY)
    assert surface.values['train_loss'][0] == objective.evaluate(
        net, batch_sources.batch_source(dataset, '', True, 128, 'cpu', 'resident'), CROSSENTROPY)['loss']
    with pytest.raises(UsageError, match='curve_file='):
        losslandscape.surface(net, dataset, x='0:1:3', curve_file=str(tmp_path / 's.h5'), surf_file=str(tmp_path / 't.h5'))


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def bad_input_folder(tmp_path, trained, end_models, checkpoints):
    for name, path in (('a.t7', end_models[0]), ('b.t7', end_models[1]), ('mlp.t7', checkpoints['mlp']),
                       ('curve.h5', trained['curve_file']), ('surf.h5', trained['curve_surface'])):
        shutil.copy(path, tmp_path / name)
    with h5py.File(tmp_path / 'curve.h5', 'a') as f:   # the copy's ends: the copies here
        for key, name in ((hdf5_layout.CURVE_START_FILE, 'a.t7'), (hdf5_layout.CURVE_END_FILE, 'b.t7')):
            f.attrs[key] = json.dumps(str(tmp_path / name))
    return tmp_path


ENDS = ['--model', 'cnn_bn', '--model_file', '{d}/a.t7', '--model_file2', '{d}/b.t7']
TRAIN_CASES = [
    ('mismatched end models', ['--model', 'cnn_bn', '--model_file', '{d}/a.t7', '--model_file2', '{d}/mlp.t7',
                               '--curve_file', '{d}/new.h5'], ['--model_file2', 'does not fit the model']),
    ('the same model twice', ['--model', 'cnn_bn', '--model_file', '{d}/a.t7', '--model_file2', '{d}/a.t7',
                              '--curve_file', '{d}/new.h5'], ['same weights']),
    ('unknown curve type', [*ENDS, '--curve', 'spline', '--curve_file', '{d}/new.h5'], ['--curve', 'invalid choice']),
    ('one bend too few', [*ENDS, '--num_bends', '1', '--curve_file', '{d}/new.h5'], ['--num_bends', 'at least 2']),
    ('no curve file', ENDS, ['--curve_file is required']),
    ('curve of other end models', ['--model', 'cnn_bn', '--model_file', '{d}/b.t7', '--model_file2', '{d}/a.t7',
                                   '--curve_file', '{d}/curve.h5', *CURVE_TRAINING], ['another --model_file']),
    ('curve trained otherwise', [*ENDS, '--curve_file', '{d}/curve.h5', '--epochs', '20', '--lr', '0.05',
                                 '--batch_size', '64'], ['--epochs 10, not 20']),
    ('curve of another curve type', [*ENDS, '--curve', 'polychain', '--curve_file', '{d}/curve.h5', *CURVE_TRAINING],
     ['--curve bezier, not polychain']),
    ('not a curve file', [*ENDS, '--curve_file', '{d}/surf.h5'], ['not a curve file']),
    ('negative learning rate', [*ENDS, '--lr', '-1', '--curve_file', '{d}/new.h5'], ['--lr', 'positive']),
]
SURFACE_CASES = [
    ('bezier beyond its ends', ['--model', 'cnn_bn', '--curve_file', '{d}/curve.h5', '--x=-0.5:1:5'], ['[0, 1] only']),
    ('curve of another model', ['--model', 'cnn', '--curve_file', '{d}/curve.h5', '--x=0:1:3'],
     ['a curve of --model cnn_bn']),
    ('curve with a y axis', ['--model', 'cnn_bn', '--curve_file', '{d}/curve.h5', '--x=0:1:3', '--y=0:1:3'], ['--y']),
    ('curve from another model file', ['--model', 'cnn_bn', '--curve_file', '{d}/curve.h5', '--model_file', '{d}/b.t7',
                                       '--x=0:1:3'], ["not the curve's t = 0 model"]),
    ('curve file that is not one', ['--model', 'cnn_bn', '--curve_file', '{d}/surf.h5', '--x=0:1:3'],
     ['not a curve file']),
    ('recompute with states', [*ENDS, '--recompute_bn', '--dir_type', 'states', '--x=0:1:3'], ['--dir_type weights']),
    ('curve plane from other ends', ['--model', 'cnn_bn', '--model_file', '{d}/b.t7', '--model_file2', '{d}/a.t7',
                                     '--model_file3', '{d}/curve.h5', '--x=0:1:3', '--y=0:1:3'],
     ['pass them as --model_file and --model_file2']),
]


@pytest.mark.parametrize('script, argv, words', [(train_curve, *case[1:]) for case in TRAIN_CASES]
                         + [(plot_surface, *case[1:]) for case in SURFACE_CASES],
                         ids=[case[0] for case in TRAIN_CASES + SURFACE_CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(bad_input_folder, capsys, script, argv, words):
    before = snapshot(bad_input_folder)
    code, err = call_main(script.main, [*DIGITS, *(a.format(d=bad_input_folder) for a in argv)], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err, err
    for word in words:
        assert word in err, err
    assert snapshot(bad_input_folder) == before


def test_bad_input_from_the_command_line(bad_input_folder):
    result = run_script('train_curve.py', *DIGITS, '--model', 'cnn_bn', '--model_file', bad_input_folder / 'a.t7',
                        '--model_file2', bad_input_folder / 'b.t7', '--num_bends', '1', '--curve_file',
                        bad_input_folder / 'new.h5')
    assert result.returncode == 2 and result.stderr.count('\n') == 1 and '--num_bends' in result.stderr
