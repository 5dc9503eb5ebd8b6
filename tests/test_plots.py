"""Tests of the plot scripts (plot_1D.py, plot_2D.py, h52vtp.py) on tiny surface files."""
import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from matplotlib.image import imread

from losslandscape import h52vtp, plot_1D, plot_2D
from losslandscape.cli.parsing import run_main
from losslandscape.errors import UsageError
from losslandscape.figures import common, curve_figures, surface_figures
from losslandscape.io import hdf5_layout as layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = '/usr/bin/chromium'
# A direction file name in the original code's style; both layouts use it, so labels agree.
RANDOM_DIR_FILE = 'model_300.t7_weights_xignore=biasbn_xnorm=filter_yignore=biasbn_ynorm=filter.h5'
FILTER_ARGS = {'xnorm': 'filter', 'ynorm': 'filter', 'model_file2': ''}


# ----------------------------------------------------------------------------- building files

def bowl(x, y=None):
    """A smooth, non-symmetric test landscape: (loss, accuracy %) on the grid."""
    if y is None:
        loss = 0.1 + 2.0 * (x - 0.2) ** 2 + 0.3 * np.sin(4 * x)
    else:
        X, Y = np.meshgrid(x, y)
        loss = 0.1 + (X - 0.2) ** 2 + 3.0 * Y ** 2 + 0.3 * np.sin(4 * X)
    return loss, np.clip(100.0 - 12.0 * loss, 0.0, 100.0)


def write_surface(path, x, y, values, *, legacy=False, done=None, dir_file=RANDOM_DIR_FILE, args=None):
    """Write a surface file in our layout (done/ group, args attribute) or the original's.

    ``done`` maps a name to its computed mask (default: every point). In the legacy layout the
    points not done hold the original's fill value -1, as that code wrote them."""
    with h5py.File(path, 'w') as f:
        f[layout.DIR_FILE] = dir_file
        f[layout.XCOORDINATES] = np.asarray(x, dtype=np.float64)
        if y is not None:
            f[layout.YCOORDINATES] = np.asarray(y, dtype=np.float64)
        for name, value in values.items():
            mask = (done or {}).get(name, np.ones(np.shape(value), dtype=bool))
            if legacy:
                f[name] = np.where(mask, value, layout.LEGACY_MISSING)
            else:
                f[name] = np.where(mask, value, np.nan)
                f.create_dataset(f'{layout.DONE_GROUP}/{name}', data=mask)
        if not legacy:
            f.attrs[layout.ARGS_ATTR] = json.dumps(FILTER_ARGS if args is None else args)
    return str(path)


def surface_2d(tmp_path, name='surf.h5', nx=7, ny=7, legacy=False, with_eig=False, **kwargs):
    x, y = np.linspace(-1, 1, nx), np.linspace(-1, 1, ny)
    loss, acc = bowl(x, y)
    values = {layout.TRAIN_LOSS: loss, layout.TRAIN_ACC: acc}
    if with_eig:
        X, Y = np.meshgrid(x, y)
        values.update({layout.MAX_EIG: 5.0 + X, layout.MIN_EIG: -0.2 + 0.3 * Y})
    return write_surface(tmp_path / name, x, y, values, legacy=legacy, **kwargs)


def surface_1d(tmp_path, name='line.h5', nx=21, legacy=False, with_test=True, **kwargs):
    x = np.linspace(-1, 1, nx)
    loss, acc = bowl(x)
    values = {layout.TRAIN_LOSS: loss, layout.TRAIN_ACC: acc}
    if with_test:
        values.update({layout.TEST_LOSS: loss + 0.3, layout.TEST_ACC: acc - 5.0})
    return write_surface(tmp_path / name, x, None, values, legacy=legacy, **kwargs)


def projection_file(path, with_loss=True, n=12):
    t = np.linspace(0.0, 1.0, n)
    extras = {layout.TRAIN_LOSS: 2.0 * (1 - t) + 0.1} if with_loss else None
    layout.write_projection_file(str(path), 0.8 * (1 - t) * np.cos(3 * t), 0.6 * (1 - t) * np.sin(3 * t), extras)
    return str(path)


def pca_direction_file(path):
    layout.write_direction_file(str(path), [np.ones(3)], [np.zeros(3)],
                                extras={layout.EXPLAINED_VARIANCE_RATIO: [0.8423, 0.1012]})
    return str(path)


def distinct_colours(png_path):
    rgb = np.round(imread(png_path)[..., :3] * 255).astype(np.int64).reshape(-1, 3)
    # One integer per colour: np.unique on a flat array is far faster than with axis=0.
    return len(np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]))


def pngs(paths):
    return [p for p in paths if p.endswith('.png')]


def assert_pictures(paths, min_colours=20):
    assert paths, 'nothing written'
    for path in paths:
        assert os.path.getsize(path) > 0, path
    for png in pngs(paths):
        assert distinct_colours(png) >= min_colours, f'{png} looks blank'
    assert {p[:-4] for p in pngs(paths)} == {p[:-4] for p in paths if p.endswith('.pdf')}


# ----------------------------------------------------------------------------- 2D pictures

def test_2d_pictures_same_in_both_layouts(tmp_path):
    """The same data (half a row not computed) in our layout and the original's: every picture is
    written, non-blank, and pixel-identical between the two."""
    x = y = np.linspace(-1, 1, 7)
    loss, acc = bowl(x, y)
    done = np.ones(loss.shape, dtype=bool)
    done[5, 4:] = False
    values = {layout.TRAIN_LOSS: loss, layout.TRAIN_ACC: acc}
    masks = {layout.TRAIN_LOSS: done, layout.TRAIN_ACC: done}
    ours = write_surface(tmp_path / 'ours.h5', x, y, values, done=masks)
    old = write_surface(tmp_path / 'old.h5', x, y, values, done=masks, legacy=True)
    suffixes = ['_2dcontour', '_2dcontourf', '_2dheat', '_3dsurface']
    for surf in (ours, old):
        written = plot_2D.plot_2d_contour(surf)
        assert sorted(written) == sorted(f'{surf}_train_loss{s}.{e}' for s in suffixes for e in ('pdf', 'png'))
        assert_pictures(written)
        # Real 3D axes: a shaded surface has many colours, an empty axes few.
        assert distinct_colours(f'{surf}_train_loss_3dsurface.png') > 200
    for suffix in suffixes:
        assert np.array_equal(imread(f'{ours}_train_loss{suffix}.png'), imread(f'{old}_train_loss{suffix}.png')), suffix


@pytest.mark.parametrize('nx, ny, holes, surf_name', [(5, 3, False, 'train_loss'), (3, 5, False, 'train_err'),
                                                      (6, 4, True, 'train_loss')],
                         ids=['wide', 'tall-train_err', 'nan-and-inf'])
def test_2d_grid_shapes_and_gaps(tmp_path, nx, ny, holes, surf_name):
    x, y = np.linspace(-1, 1, nx), np.linspace(-0.5, 0.5, ny)
    loss, acc = bowl(x, y)
    done = np.ones(loss.shape, dtype=bool)
    if holes:
        done[0, 0] = False           # not computed yet
        loss[1, 2] = np.inf          # diverged
        loss[2, 1] = np.nan          # computed, but NaN
    surf = write_surface(tmp_path / 's.h5', x, y, {layout.TRAIN_LOSS: loss, layout.TRAIN_ACC: acc},
                         done={layout.TRAIN_LOSS: done})
    levels = dict(vmin=0, vmax=60, vlevel=5) if surf_name == 'train_err' else {}
    assert_pictures(plot_2D.plot_2d_contour(surf, surf_name=surf_name, zlim=3.0 if holes else None, **levels))


def test_eig_ratio_heatmaps(tmp_path):
    surf = surface_2d(tmp_path, with_eig=True)
    written = plot_2D.plot_2d_eig_ratio(surf)
    assert f'{surf}_min_eig_max_eig_abs_ratio_heat_sns.png' in written
    assert_pictures(written)


# ----------------------------------------------------------------------------- trajectories

def test_trajectory_plots(tmp_path):
    surf = surface_2d(tmp_path)
    dirs = pca_direction_file(tmp_path / 'pca.h5')
    proj = projection_file(tmp_path / 'proj.h5')
    assert common.pca_axis_labels(dirs) == ('1st PC: 84.23 %', '2nd PC: 10.12 %')
    written = plot_2D.plot_trajectory(proj, dirs)
    assert written == [proj + '.pdf', proj + '.png']
    assert_pictures(written)
    plain = projection_file(tmp_path / 'plain.h5', with_loss=False)
    written = plot_2D.plot_contour_trajectory(surf, dirs, plain)
    assert written[1] == plain + '_train_loss_2dcontour_proj.png'
    assert_pictures(written)
    coloured = plot_2D.plot_contour_trajectory(surf, dirs, proj)
    # The loss colour bar adds the plasma colours to the picture.
    assert distinct_colours(coloured[1]) > distinct_colours(written[1])


# ----------------------------------------------------------------------------- 1D pictures

def test_1d_pictures_same_in_both_layouts(tmp_path):
    ours = surface_1d(tmp_path, name='ours.h5')
    old = surface_1d(tmp_path, name='old.h5', legacy=True)
    names = ['_1d_loss_acc.png', '_1d_train_loss.png', '_1d_train_err.png']
    for surf in (ours, old):
        written = plot_1D.plot_1d_loss_err(surf)
        assert sorted(pngs(written)) == sorted(surf + n for n in names)
        assert_pictures(written, min_colours=5)
    for name in names:
        assert np.array_equal(imread(ours + name), imread(old + name)), name


def test_1d_gaps_eig_ratio_and_repeat(tmp_path):
    x = np.linspace(-1, 1, 11)
    loss, acc = bowl(x)
    loss[3], loss[5] = np.inf, np.nan
    values = {layout.TRAIN_LOSS: loss, layout.TRAIN_ACC: acc, layout.MAX_EIG: 4 + x, layout.MIN_EIG: -0.5 * x}
    surf = write_surface(tmp_path / 'gaps.h5', x, None, values)
    written = plot_1D.main(['--surf_file', surf, '--log'])
    assert f'{surf}_1d_loss_acc_log.png' in written and f'{surf}_1d_train_loss_log.png' in written
    assert f'{surf}_1d_eig_abs_ratio.png' in written and f'{surf}_1d_eig_ratio.png' in written
    assert_pictures(written, min_colours=5)
    for idx in (1, 2, 3):
        surface_1d(tmp_path, name=f'dirs_{idx}.h5')
    prefix = str(tmp_path / 'dirs')
    written = plot_1D.main(['--prefix', prefix, '--idx_min', '1', '--idx_max', '3'])
    assert written == [prefix + '_1d_loss_err_repeat.pdf', prefix + '_1d_loss_err_repeat.png']
    assert_pictures(written, min_colours=5)


# plot_surface.py's defaults, as its 'args' attribute records them: no --xnorm/--ynorm is JSON null.
DEFAULT_RUN_ARGS = {'xnorm': None, 'ynorm': None, 'model_file2': '', 'model_file3': '', 'same_dir': False,
                    'dir_file': ''}


@pytest.mark.parametrize('args, dir_file, label', [
    ({'model_file2': 'b/model_10.t7', 'xnorm': ''}, 'x.h5', 'interpolation coefficient'),
    (None, 'a/model_300.t7_model_10.t7_states.h5', 'interpolation coefficient'),
    ({'xnorm': 'layer', 'model_file2': ''}, 'x.h5', 'layer-normalized direction'),
    ({'xnorm': '', 'model_file2': ''}, 'x.h5', 'unnormalized random direction'),
    (DEFAULT_RUN_ARGS, 'model_300.t7_weights.h5', 'unnormalized random direction'),
    # A run given --dir_file reused directions made by other settings: its own --xnorm says nothing.
    ({**DEFAULT_RUN_ARGS, 'dir_file': RANDOM_DIR_FILE}, RANDOM_DIR_FILE, 'filter-normalized direction'),
    (None, RANDOM_DIR_FILE, 'filter-normalized direction'),
    (None, 'a/model_300.t7_weights_xignore=biasbn_idx=2.h5', 'unnormalized random direction'),
    (None, 'a/model_300.t7_states_xnorm=dlayer.h5', 'dlayer-normalized direction'),
    (None, 'a/PCA_weights_save_epoch=1/directions.h5', '1st PC'),
    (None, 'my_directions.h5', 'direction (normalization unknown)'),
], ids=['args-model_file2', 'original-interp-name', 'layer', 'unnormalized', 'unnormalized-null',
        'reused-dir-file', 'original-filter-name', 'original-unnormalized-name', 'original-dlayer-name',
        'original-pca-name', 'original-unknown-name'])
def test_x_axis_label(tmp_path, args, dir_file, label):
    surf = surface_1d(tmp_path, legacy=args is None, dir_file=dir_file, args=args)
    assert common.direction_label(layout.read_surface(surf), 'x') == label


@pytest.mark.parametrize('dir_file, args, labels', [
    ('model_300.t7_weights_xnorm=filter.h5', None, ('filter-normalized direction', 'unnormalized random direction')),
    ('model_300.t7_weights_xnorm=layer_same_dir.h5', None, ('layer-normalized direction',) * 2),
    ('x.h5', {**DEFAULT_RUN_ARGS, 'xnorm': 'filter'}, ('filter-normalized direction', 'unnormalized random direction')),
    ('x.h5', {**DEFAULT_RUN_ARGS, 'xnorm': 'filter', 'same_dir': True}, ('filter-normalized direction',) * 2),
    ('a/model_300.t7_model_10.t7_weights_ynorm=filter.h5', None, ('interpolation coefficient', 'filter-normalized direction')),
], ids=['original-y-unnormalized', 'original-same-dir', 'args-y-null', 'args-same-dir', 'original-interp-and-random'])
def test_y_axis_label(tmp_path, dir_file, args, labels):
    surf = surface_2d(tmp_path, legacy=args is None, dir_file=dir_file, args=args)
    surface = layout.read_surface(surf)
    assert (common.direction_label(surface, 'x'), common.direction_label(surface, 'y')) == labels


@pytest.mark.parametrize('legacy', [False, True], ids=['ours', 'original'])
def test_pca_surface_is_labelled_by_its_direction_file(tmp_path, legacy):
    """A surface along plot_trajectory's PCA directions (plot_surface.py --dir_file directions.h5 records
    xnorm null and the dir_file): the axes are the principal components, while the file is there."""
    pca = pca_direction_file(tmp_path / 'directions.h5')
    args = None if legacy else {**DEFAULT_RUN_ARGS, 'dir_file': pca}
    surface = layout.read_surface(surface_2d(tmp_path, dir_file=pca, args=args, legacy=legacy))
    line = layout.read_surface(surface_1d(tmp_path, dir_file=pca, args=args, legacy=legacy))
    assert common.axis_titles(surface) == ('1st PC: 84.23 %', '2nd PC: 10.12 %')
    assert common.direction_label(surface, 'y') == '2nd PC: 10.12 %'
    assert common.direction_label(line, 'x') == '1st PC: 84.23 %'
    os.remove(pca)   # moved away: no variance to show, and never a random direction
    assert common.axis_titles(surface) == ('x: direction (normalization unknown)', 'y: direction (normalization unknown)')
    with open(pca, 'w') as f:
        f.write('not HDF5')   # unreadable: the same, silently
    assert common.direction_label(line, 'x') == 'direction (normalization unknown)'


def figure_labels(monkeypatch, module):
    """Record (file name, x label, y label) of every figure ``module`` saves."""
    saved = []

    def recording_save_figure(fig, base):
        for ax in fig.axes:
            if ax.get_label() != '<colorbar>':
                saved.append((os.path.basename(base), ax.get_xlabel(), ax.get_ylabel()))
        return real_save_figure(fig, base)
    real_save_figure = module.save_figure
    monkeypatch.setattr(module, 'save_figure', recording_save_figure)
    return saved


@pytest.mark.parametrize('given', [True, False], ids=['--dir_file', 'own-dir_file'])
def test_2d_plots_labelled_with_principal_components(tmp_path, monkeypatch, given):
    """--dir_file (default: the surface's own direction file) labels every 2D plot and the viewer."""
    pca = pca_direction_file(tmp_path / 'directions.h5')
    surf = surface_2d(tmp_path, dir_file='elsewhere/directions.h5' if given else pca)
    saved = figure_labels(monkeypatch, surface_figures)
    written = plot_2D.main(['--surf_file', surf, '--html'] + (['--dir_file', pca] if given else []))
    expected = ('1st PC: 84.23 %', '2nd PC: 10.12 %')
    assert sorted(name for name, _, _ in saved) == \
        sorted(f'surf.h5_train_loss_{kind}' for kind in ('2dcontour', '2dcontourf', '2dheat', '3dsurface'))
    for name, *labels in saved:
        assert tuple(labels) == expected, name
    html = open(written[-1], encoding='utf-8').read()
    assert html.count(expected[0]) >= 2 and html.count(expected[1]) >= 2   # contour map and 3D scene
    saved.clear()
    plot_2D.plot_2d_eig_ratio(surface_2d(tmp_path, name='eig.h5', with_eig=True), dir_file=pca)
    assert [tuple(labels) for _, *labels in saved] == [expected, expected]


def test_1d_plots_labelled_with_principal_component(tmp_path, monkeypatch):
    pca = pca_direction_file(tmp_path / 'directions.h5')
    surf = surface_1d(tmp_path, dir_file=pca, args={**DEFAULT_RUN_ARGS, 'dir_file': pca})
    saved = figure_labels(monkeypatch, curve_figures)
    plot_1D.main(['--surf_file', surf])
    assert len(saved) == 4   # loss + accuracy (twin axes), training loss, training error
    assert {x_label for _, x_label, _ in saved} == {'1st PC: 84.23 %', ''}   # the twin axes has no x label


# ----------------------------------------------------------------------------- VTK

def read_vtp(path):
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader
    reader = vtkXMLPolyDataReader()
    reader.SetFileName(path)
    reader.Update()
    poly = reader.GetOutput()
    points = vtk_to_numpy(poly.GetPoints().GetData())
    zvalue = vtk_to_numpy(poly.GetPointData().GetArray('zvalue'))
    return poly, points, zvalue


@pytest.mark.parametrize('nx, ny', [(5, 3), (4, 4), (2, 6)])
@pytest.mark.parametrize('zmax, log', [(-1, False), (2.0, False), (-1, True), (1.5, True)])
def test_vtp_points_quads_values(tmp_path, nx, ny, zmax, log):
    surf = surface_2d(tmp_path, nx=nx, ny=ny)
    path = h52vtp.h5_to_vtp(surf, zmax=zmax, log=log)
    assert path == surf + '_train_loss' + (f'_zmax={zmax}' if zmax > 0 else '') + ('_log' if log else '') + '.vtp'
    poly, points, zvalue = read_vtp(path)
    assert poly.GetNumberOfPoints() == nx * ny
    assert poly.GetNumberOfPolys() == (nx - 1) * (ny - 1)
    expected = layout.read_surface(surf).values[layout.TRAIN_LOSS]
    expected = np.minimum(expected, zmax) if zmax > 0 else expected
    expected = np.log(expected + 0.1) if log else expected
    np.testing.assert_allclose(zvalue, expected.ravel())
    X, Y = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny))
    np.testing.assert_allclose(points, np.column_stack([X.ravel(), Y.ravel(), expected.ravel()]))


def test_vtp_interp_and_original_layout(tmp_path):
    ours = surface_2d(tmp_path, name='ours.h5', nx=6, ny=6)
    old = surface_2d(tmp_path, name='old.h5', nx=6, ny=6, legacy=True)
    _, _, z_ours = read_vtp(h52vtp.h5_to_vtp(ours))
    _, _, z_old = read_vtp(h52vtp.h5_to_vtp(old))
    np.testing.assert_array_equal(z_ours, z_old)
    path = h52vtp.main(['--surf_file', ours, '--interp', '9'])
    poly, points, zvalue = read_vtp(path)
    assert poly.GetNumberOfPoints() == 81 and poly.GetNumberOfPolys() == 64
    corners = layout.read_surface(ours).values[layout.TRAIN_LOSS][[0, 0, -1, -1], [0, -1, 0, -1]]
    # The spline passes through the data, and the resampled grid keeps the corners.
    np.testing.assert_allclose(zvalue.reshape(9, 9)[[0, 0, -1, -1], [0, -1, 0, -1]], corners, rtol=1e-9)


@pytest.mark.parametrize('nx, ny', [(5, 3), (3, 5), (5, 2), (2, 3), (2, 2), (7, 4)])
def test_resample_small_and_non_square_grids(nx, ny):
    """Each axis gets a spline degree its own point count allows (3 at most, 1 for 2 points)."""
    x, y = np.linspace(-1, 1, nx), np.linspace(-0.5, 0.5, ny)
    X, Y = np.meshgrid(x, y)
    plane = 0.7 + 1.5 * X - 2.0 * Y
    new_x, new_y, new_z = h52vtp.resample(x, y, plane, 13)
    assert new_x.shape == new_y.shape == (13,) and new_z.shape == (13, 13)
    np.testing.assert_allclose(new_x[[0, -1]], [-1, 1])
    np.testing.assert_allclose(new_y[[0, -1]], [-0.5, 0.5])
    new_X, new_Y = np.meshgrid(new_x, new_y)
    np.testing.assert_allclose(new_z, 0.7 + 1.5 * new_X - 2.0 * new_Y, atol=1e-12)   # a plane, exactly
    # 13 points span the range with the 2, 3, 4, 5 and 7 point grids' own nodes among them: there
    # the spline passes through the data, whatever its shape.
    curved, _ = bowl(x, y)
    _, _, new_curved = h52vtp.resample(x, y, curved, 13)
    rows = np.abs(new_y[:, None] - y[None, :]).argmin(axis=0)
    cols = np.abs(new_x[:, None] - x[None, :]).argmin(axis=0)
    np.testing.assert_allclose(new_y[rows], y, atol=1e-12)
    np.testing.assert_allclose(new_x[cols], x, atol=1e-12)
    np.testing.assert_allclose(new_curved[np.ix_(rows, cols)], curved, atol=1e-12)


def test_vtp_interp_on_a_three_row_grid(tmp_path):
    surf = surface_2d(tmp_path, nx=5, ny=3)
    poly, points, _ = read_vtp(h52vtp.main(['--surf_file', surf, '--interp', '10']))
    assert poly.GetNumberOfPoints() == 100 and poly.GetNumberOfPolys() == 81
    assert points[:, 0].min() == -1 and points[:, 1].max() == 1


def test_vtp_drops_non_finite_points(tmp_path):
    x, y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)
    loss, _ = bowl(x, y)
    done = np.ones(loss.shape, dtype=bool)
    done[0, 0] = False        # corner: 1 quad
    loss[2, 2] = np.inf       # interior: 4 quads
    surf = write_surface(tmp_path / 's.h5', x, y, {layout.TRAIN_LOSS: loss}, done={layout.TRAIN_LOSS: done})
    poly, _, zvalue = read_vtp(h52vtp.h5_to_vtp(surf))
    assert poly.GetNumberOfPoints() == 20 - 2 and poly.GetNumberOfPolys() == 12 - 5
    assert np.isfinite(zvalue).all()
    clipped, _, zclipped = read_vtp(h52vtp.h5_to_vtp(surf, zmax=3.0))
    assert clipped.GetNumberOfPoints() == 19 and zclipped.max() == 3.0   # inf clipped, corner dropped


def sharp_valley(tmp_path):
    """A 4x4 surface with a narrow valley (lowest loss 0.238) between steep walls, where the
    bicubic spline through the points dips far below every computed value (to about -0.47)."""
    x = y = np.linspace(-1, 1, 4)
    loss = np.array([[3.0, 3.0, 3.0, 3.0], [0.3, 0.238, 0.3, 0.3], [6.0, 6.0, 6.0, 6.0], [6.5, 6.5, 6.5, 6.5]])
    return write_surface(tmp_path / 'valley.h5', x, y, {layout.TRAIN_LOSS: loss}), x, y, loss


def test_vtp_interp_log_keeps_every_point_of_an_overshooting_spline(tmp_path, capsys):
    """The spline must not invent a loss below the grid's lowest: with --log such values
    (<= -0.1) became NaN and their points vanished from the .vtp."""
    from scipy.interpolate import RectBivariateSpline
    surf, x, y, loss = sharp_valley(tmp_path)
    fine = np.linspace(-1, 1, 25)
    assert RectBivariateSpline(y, x, loss)(fine, fine).min() < -h52vtp.LOG_OFFSET   # the raw spline overshoots
    _, _, resampled = h52vtp.resample(x, y, loss, 25)
    assert resampled.min() == loss.min()
    poly, _, zvalue = read_vtp(h52vtp.main(['--surf_file', surf, '--interp', '25', '--log']))
    assert poly.GetNumberOfPoints() == 25 * 25 and poly.GetNumberOfPolys() == 24 * 24
    assert np.isfinite(zvalue).all() and zvalue.min() >= np.log(loss.min() + h52vtp.LOG_OFFSET) - 1e-12
    assert 'note' not in capsys.readouterr().out


@pytest.mark.parametrize('interp', [-1, 9], ids=['as-computed', 'interp'])
def test_vtp_log_notes_points_it_drops(tmp_path, capsys, interp):
    """Values <= -0.1 in the data itself have no log(value + 0.1): they are dropped, with a note."""
    surf = surface_2d(tmp_path, nx=5, ny=5, with_eig=True)
    poly, _, _ = read_vtp(h52vtp.h5_to_vtp(surf, surf_name=layout.MIN_EIG, log=True, interp=interp))
    values, grid = layout.read_surface(surf).values[layout.MIN_EIG], np.linspace(-1, 1, 5)
    heights = h52vtp.resample(grid, grid, values, interp)[2] if interp > 0 else values
    dropped = int((heights <= -h52vtp.LOG_OFFSET).sum())
    assert 0 < dropped < heights.size
    assert poly.GetNumberOfPoints() == heights.size - dropped
    assert f'note: {layout.MIN_EIG}: {dropped} point(s) <= -0.1 have no log(value + 0.1); dropped' in capsys.readouterr().out


# ----------------------------------------------------------------------------- HTML viewer

def test_html_viewer_is_self_contained(tmp_path):
    surf = surface_2d(tmp_path, nx=9, ny=7)
    proj = projection_file(tmp_path / 'proj.h5')
    html_path = plot_2D.write_html_viewer(surf, proj_file=proj)
    assert html_path == surf + '_train_loss_viewer.html'
    html = open(html_path, encoding='utf-8').read()
    assert not re.search(r'<script[^>]*\bsrc\s*=\s*["\']?(https?:)?//', html, re.IGNORECASE)
    assert 'Plotly.newPlot' in html and 'trajectory' in html


def viewer_figure_spec(html_path):
    """(data, layout) of the figure a viewer file draws: the JSON arguments of its Plotly.newPlot call."""
    html = open(html_path, encoding='utf-8').read()
    decoder, position = json.JSONDecoder(), html.index('Plotly.newPlot(') + len('Plotly.newPlot(')
    arguments = []
    for _ in range(3):   # the element id, the traces, the layout
        position += len(re.match(r'[\s,]*', html[position:]).group())
        value, position = decoder.raw_decode(html, position)
        arguments.append(value)
    return arguments[1], arguments[2]


@pytest.mark.parametrize('surf_name', [layout.TRAIN_LOSS, layout.MIN_EIG])
def test_html_viewer_layout_leaves_room_for_every_label(tmp_path, surf_name):
    """What overlapped or was clipped at 1000x800: the colour bar stood between the panels, on the
    contour map's y-axis title, with its long title running into the map; the 3D scene's axis
    titles were whole direction labels (clipped) and its z title the raw key."""
    surf = surface_2d(tmp_path, nx=9, ny=7, with_eig=True)
    proj = projection_file(tmp_path / 'proj.h5')
    data, spec = viewer_figure_spec(plot_2D.write_html_viewer(surf, surf_name=surf_name, proj_file=proj))
    pretty = common.PRETTY_NAMES[surf_name]
    titles = common.axis_titles(layout.read_surface(surf))
    scene, contour_x = spec['scene'], spec['xaxis']
    assert scene['zaxis']['title']['text'] == pretty
    assert (scene['xaxis']['title']['text'], scene['yaxis']['title']['text']) == ('x', 'y')
    # The full direction labels are still there: under the scene and on the contour map's axes.
    assert any(all(t in note['text'] for t in titles) for note in spec['annotations'])
    assert (contour_x['title']['text'], spec['yaxis']['title']['text']) == titles
    assert scene['domain']['x'][1] < contour_x['domain'][0]
    # One colour bar, right of the contour map (in the right margin), its title along the bar.
    bars = [trace['colorbar'] for trace in data if trace.get('showscale', True) and 'colorbar' in trace]
    assert len(bars) == 1
    assert bars[0]['title'] == {'text': pretty, 'side': 'right'}
    assert bars[0]['x'] >= contour_x['domain'][1] and bars[0]['xanchor'] == 'left'
    assert spec['margin']['r'] >= 100
    # The legend sits below the panels, not over the colour bar or the map.
    assert spec['legend']['orientation'] == 'h' and spec['legend']['y'] < 0 and spec['margin']['b'] >= 100
    # The camera stands farther off than plotly's default (1.25, 1.25, 1.25), so the box fits its panel.
    eye, center = scene['camera']['eye'], scene['camera']['center']
    assert np.linalg.norm([eye[a] - center[a] for a in 'xyz']) > np.linalg.norm([1.25] * 3)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f'{CHROMIUM} is not installed (apt-get install chromium)')
def test_html_viewer_renders_in_headless_chromium(tmp_path):
    surf = surface_2d(tmp_path, nx=9, ny=7)
    html_path = plot_2D.write_html_viewer(surf, out_path=str(tmp_path / 'viewer.html'))
    shot = tmp_path / 'shot.png'
    command = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
               '--disable-background-networking', '--disable-component-update', '--disable-sync',
               f'--user-data-dir={tmp_path / "profile"}', f'--screenshot={shot}', '--window-size=1200,800',
               '--virtual-time-budget=5000', 'file://' + os.path.abspath(html_path)]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert shot.exists(), 'chromium wrote no screenshot'
    assert distinct_colours(str(shot)) > 200


# ----------------------------------------------------------------------------- command line

def run_script(script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope='module')
def bad_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('bad')
    not_hdf5 = folder / 'notes.h5'
    not_hdf5.write_text('not an HDF5 file')
    with h5py.File(folder / 'other.h5', 'w') as f:
        f['weights'] = np.zeros(3)
    return {'one_d': surface_1d(folder, name='one_d.h5'), 'two_d': surface_2d(folder, name='two_d.h5'),
            'not_hdf5': str(not_hdf5), 'other': str(folder / 'other.h5'), 'missing': str(folder / 'nope.h5')}


BAD_INPUTS = [
    ('plot_2D.py', ['--surf_file', '{missing}']),
    ('plot_2D.py', ['--surf_file', '{two_d}', '--surf_name', 'test_loss']),
    ('plot_2D.py', ['--surf_file', '{other}']),
    ('plot_2D.py', ['--surf_file', '{one_d}']),
    ('plot_2D.py', ['--surf_file', '{two_d}', '--vmin', '5', '--vmax', '1']),
    ('plot_2D.py', ['--proj_file', '{two_d}']),
    ('plot_2D.py', ['--surf_file', '{two_d}', '--dir_file', '{missing}', '--html']),
    ('plot_2D.py', ['--surf_file', '{two_d}', '--dir_file', '{other}']),
    ('plot_1D.py', ['--surf_file', '{two_d}']),
    ('plot_1D.py', ['--surf_file', '{not_hdf5}']),
    ('plot_1D.py', ['--prefix', '{missing}']),
    ('h52vtp.py', ['--surf_file', '{one_d}']),
    ('h52vtp.py', ['--surf_file', '{two_d}', '--surf_name', 'max_eig']),
    ('h52vtp.py', ['--surf_file', '{two_d}', '--interp', '1']),
]
BAD_INPUT_IDS = ['2d-missing', '2d-no-surf-name', '2d-not-surface', '2d-given-1d', '2d-empty-levels',
                 '2d-proj-not-projection', '2d-dir-file-missing', '2d-dir-file-not-directions',
                 '1d-given-2d', '1d-not-hdf5', '1d-prefix-missing', 'vtp-given-1d',
                 'vtp-no-surf-name', 'vtp-interp-1']
MAINS = {'plot_1D.py': plot_1D.main, 'plot_2D.py': plot_2D.main, 'h52vtp.py': h52vtp.main}


def folder_state(folder):
    return {name: os.path.getmtime(os.path.join(folder, name)) for name in os.listdir(folder)}


def assert_one_line_error(code, stderr, prog):
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'{prog}: error: '), stderr
    assert 'Traceback' not in stderr


@pytest.mark.parametrize('script, args', BAD_INPUTS, ids=BAD_INPUT_IDS)
def test_bad_input_is_one_line_error(bad_inputs, capsys, script, args):
    """In-process through cli.run_main (fast): exit 2, one line, nothing written."""
    folder = os.path.dirname(bad_inputs['two_d'])
    before = folder_state(folder)
    with pytest.raises(SystemExit) as stop:
        run_main(MAINS[script], [a.format(**bad_inputs) for a in args])
    assert_one_line_error(stop.value.code, capsys.readouterr().err, 'main')
    assert folder_state(folder) == before, 'a failed run wrote or touched files'


@pytest.mark.parametrize('script, args', [BAD_INPUTS[i] for i in (1, 3, 6, 9, 11)],
                         ids=[BAD_INPUT_IDS[i] for i in (1, 3, 6, 9, 11)])
def test_bad_input_as_a_user_runs_it(bad_inputs, script, args):
    """The same contract from the real command line (subprocess, cwd = the repository)."""
    folder = os.path.dirname(bad_inputs['two_d'])
    before = folder_state(folder)
    result = run_script(script, *[a.format(**bad_inputs) for a in args])
    assert_one_line_error(result.returncode, result.stderr, script)
    assert folder_state(folder) == before, 'a failed run wrote or touched files'


def test_a_surf_name_the_file_lacks_is_refused_with_what_it_has(bad_inputs):
    result = run_script('plot_2D.py', '--surf_file', bad_inputs['two_d'], '--surf_name', 'bogus')
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert "no 'bogus'" in result.stderr and 'train_loss' in result.stderr


def test_an_objective_value_plots_by_its_name(tmp_path):
    """Values an objective adds (train_perplexity, train_K) are plotted like the built-in ones."""
    surf = surface_2d(tmp_path)
    with h5py.File(surf, 'a') as f:
        f['train_perplexity'] = np.exp(f['train_loss'][()])
        f['done/train_perplexity'] = f['done/train_loss'][()]
    written = plot_2D.plot_2d_contour(surf, surf_name='train_perplexity', vmin=1, vmax=20, vlevel=1)
    assert written and all(os.path.getsize(p) > 0 for p in written) and any('train_perplexity' in p for p in written)


def test_plot_options_are_keyword_only(tmp_path):
    """The original passed ``show`` positionally into ``vmin``; options here cannot be positional."""
    surf = surface_2d(tmp_path)
    with pytest.raises(TypeError):
        plot_2D.plot_2d_contour(surf, 'train_loss', 0.1)
    with pytest.raises(TypeError):
        plot_1D.plot_1d_loss_err(surf, -1.0)


def test_direction_file_argument_missing_is_usage_error(tmp_path):
    proj = projection_file(tmp_path / 'proj.h5')
    with pytest.raises(UsageError, match='--dir_file'):
        plot_2D.main(['--proj_file', proj, '--dir_file', str(tmp_path / 'nope.h5')])
    assert not os.path.exists(proj + '.png')

