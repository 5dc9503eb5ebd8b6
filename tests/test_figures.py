"""The figure functions for Python (losslandscape.figures): each takes a surface (a Surface or its
file) and returns its Figure with the expected artists, writing nothing unless given save=."""
import os

import numpy as np
import pytest
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure

from losslandscape import figures
from losslandscape.errors import UsageError
from losslandscape.figures.common import PRETTY_NAMES
from losslandscape.io import hdf5_layout as layout
from tests.test_plots import bowl, pca_direction_file, projection_file, surface_1d, surface_2d, write_surface


@pytest.fixture
def files(tmp_path):
    """Surface, projection and spectrum files in their own folder."""
    folder = tmp_path / 'data'
    folder.mkdir()
    x = np.linspace(-1, 1, 11)
    line_loss, line_acc = bowl(x)
    grid = np.linspace(-2.0, 6.0, 50)
    layout.write_spectrum_file(str(folder / 'spectrum.h5'),
                               {layout.DENSITY_GRID: grid, layout.DENSITY: np.exp(-(grid - 1.0) ** 2)},
                               {'num_params': 330, layout.DENSITY_SETTINGS: {'starts': 4}})
    return {
        'surface': surface_2d(folder, nx=9, ny=7, with_eig=True),
        'line': surface_1d(folder),
        'line_no_test': surface_1d(folder, name='train_only.h5', with_test=False),
        'eig_line': write_surface(folder / 'eig_line.h5', x, None, {
            layout.TRAIN_LOSS: line_loss, layout.TRAIN_ACC: line_acc, layout.MAX_EIG: 4 + x, layout.MIN_EIG: -0.5 * x}),
        'proj': projection_file(folder / 'proj.h5'),
        'spectrum': str(folder / 'spectrum.h5'),
    }


def contour_sets(ax):
    return [artist for artist in ax.collections if isinstance(artist, ContourSet)]


def colorbar_labels(fig):
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == '<colorbar>']


def main_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != '<colorbar>']


# ----------------------------------------------------------------------------- nothing written unless asked

def every_figure(files):
    surface, line = files['surface'], files['line']
    return {
        'loss_curve': figures.loss_curve(line),
        'value_curve': figures.value_curve(line, 'test_err'),
        'eig_ratio_curve': figures.eig_ratio_curve(files['eig_line']),
        'overlaid_loss_curves': figures.overlaid_loss_curves([line, files['line_no_test']]),
        'path_comparison': figures.path_comparison(line, files['line_no_test']),
        'contour': figures.contour(surface),
        'filled contour': figures.contour(surface, filled=True),
        'heatmap': figures.heatmap(surface),
        'surface_3d': figures.surface_3d(surface),
        'eig_ratio_map': figures.eig_ratio_map(surface),
        'trajectory': figures.trajectory(files['proj']),
        'trajectory_contour': figures.trajectory_contour(surface, files['proj']),
        'spectrum_density': figures.spectrum_density(files['spectrum']),
    }


def test_each_function_returns_a_figure_and_writes_nothing(files, tmp_path, monkeypatch, capsys):
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.chdir(work)
    data = os.path.dirname(files['surface'])
    before = sorted(os.listdir(data))
    for name, fig in every_figure(files).items():
        assert isinstance(fig, Figure), name
        assert main_axes(fig), f'{name}: nothing drawn'
        assert fig.canvas.manager is None, f'{name}: a pyplot figure (kept open by pyplot)'
        assert fig._repr_png_().startswith(b'\x89PNG'), name   # how a notebook shows it
    assert sorted(os.listdir(data)) == before and os.listdir(work) == []
    assert 'wrote' not in capsys.readouterr().out


def test_save_writes_the_pdf_and_png(files, tmp_path):
    base = str(tmp_path / 'out' / 'contour')
    os.mkdir(tmp_path / 'out')
    fig = figures.contour(files['surface'], save=base)
    assert isinstance(fig, Figure)
    assert sorted(os.listdir(tmp_path / 'out')) == ['contour.pdf', 'contour.png']
    viewer = str(tmp_path / 'out' / 'viewer.html')
    figures.html_viewer(files['surface'], save=viewer)
    assert 'Plotly.newPlot' in open(viewer, encoding='utf-8').read()


# ----------------------------------------------------------------------------- 2D surfaces

@pytest.mark.parametrize('vmin, vmax, vlevel', [(0.1, 10, 0.5), (0.2, 3.0, 0.4), (0, 2, 1)])
def test_contour_levels_are_those_asked_for(files, vmin, vmax, vlevel):
    fig = figures.contour(files['surface'], vmin=vmin, vmax=vmax, vlevel=vlevel)
    [ax] = fig.axes   # contour lines have no colour bar
    [lines] = contour_sets(ax)
    np.testing.assert_allclose(lines.levels, np.arange(vmin, vmax, vlevel))
    assert lines.filled is False
    assert ax.texts, 'the contour lines carry no value labels'
    assert ax.get_title() == PRETTY_NAMES['train_loss']


def test_filled_contours_have_a_colour_bar(files):
    fig = figures.contour(files['surface'], surf_name='train_err', vmin=0, vmax=60, vlevel=5, filled=True)
    [ax] = main_axes(fig)
    [filled] = contour_sets(ax)
    assert filled.filled is True
    np.testing.assert_allclose(filled.levels, np.arange(0, 60, 5))
    assert filled.colorbar is not None
    assert colorbar_labels(fig) == ['Training error (%)']


def test_heatmap_cells_and_scale(files):
    surface = layout.read_surface(files['surface'])
    fig = figures.heatmap(surface, vmin=0.5, vmax=4)
    [ax] = main_axes(fig)
    [mesh] = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert mesh.get_clim() == (0.5, 4)
    np.testing.assert_allclose(mesh.get_array().reshape(7, 9), surface.values['train_loss'])
    assert colorbar_labels(fig) == ['Training loss']


def test_surface_3d_is_a_3d_axes_with_a_colour_bar(files):
    fig = figures.surface_3d(files['surface'], zlim=1.0)
    [ax] = main_axes(fig)
    assert ax.name == '3d'
    assert [c for c in ax.collections if isinstance(c, PolyCollection)], 'no surface drawn'
    assert ax.get_zlim()[1] == 1.0
    assert colorbar_labels(fig) == ['Training loss']


def test_eig_ratio_map_values(files):
    surface = layout.read_surface(files['surface'])
    ratio = surface.values['min_eig'] / surface.values['max_eig']
    for signed, expected, clim in ((False, np.abs(ratio), (0, 0.5)), (True, ratio, (ratio.min(), ratio.max()))):
        fig = figures.eig_ratio_map(surface, signed=signed)
        [mesh] = [c for c in main_axes(fig)[0].collections if isinstance(c, QuadMesh)]
        np.testing.assert_allclose(mesh.get_array().reshape(7, 9), expected)
        np.testing.assert_allclose(mesh.get_clim(), clim)


def test_a_file_and_its_surface_object_give_the_same_figure(files):
    path = files['surface']
    by_path = figures.contour(path, vmin=0.2, vmax=3, vlevel=0.2)
    by_object = figures.contour(layout.read_surface(path), vmin=0.2, vmax=3, vlevel=0.2)
    [a], [b] = contour_sets(by_path.axes[0]), contour_sets(by_object.axes[0])
    assert len(a.allsegs) == len(b.allsegs)
    for segments_a, segments_b in zip(a.allsegs, b.allsegs):
        assert len(segments_a) == len(segments_b)
        for one, other in zip(segments_a, segments_b):
            np.testing.assert_array_equal(one, other)
    assert by_path.axes[0].get_xlabel() == by_object.axes[0].get_xlabel() == 'x: filter-normalized direction'
    curve_by_path = figures.loss_curve(files['line'])
    curve_by_object = figures.loss_curve(layout.read_surface(files['line']))
    for ax_a, ax_b in zip(curve_by_path.axes, curve_by_object.axes):
        assert len(ax_a.lines) == len(ax_b.lines) == 2
        for one, other in zip(ax_a.lines, ax_b.lines):
            np.testing.assert_array_equal(one.get_xydata(), other.get_xydata())


def test_pca_direction_file_titles_the_axes(files, tmp_path):
    pca = pca_direction_file(tmp_path / 'directions.h5')
    ax = figures.contour(files['surface'], dir_file=pca).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ('1st PC: 84.23 %', '2nd PC: 10.12 %')


# ----------------------------------------------------------------------------- trajectories

def test_trajectory_figures_draw_the_path(files):
    proj = layout.read_projection_file(files['proj'])
    path = np.column_stack([proj['proj_xcoord'], proj['proj_ycoord']])
    alone = figures.trajectory(files['proj'])
    on_contours = figures.trajectory_contour(files['surface'], files['proj'], vmin=0.1, vmax=3, vlevel=0.5)
    for fig in (alone, on_contours):
        [ax] = main_axes(fig)
        assert any(np.array_equal(line.get_xydata(), path) for line in ax.lines), 'no line along the path'
        assert colorbar_labels(fig) == ['checkpoint training loss']
        assert ax.get_legend() is not None
    near, far = contour_sets(main_axes(on_contours)[0])
    np.testing.assert_allclose(near.levels, np.arange(0.1, 3, 0.5))
    np.testing.assert_allclose(far.levels, np.logspace(1, 8, num=8))


def test_html_viewer_returns_its_plotly_figure(files):
    import plotly.graph_objects as go
    surface = layout.read_surface(files['surface'])
    fig = figures.html_viewer(surface, proj_file=files['proj'])
    assert isinstance(fig, go.Figure)
    [surface_trace] = [trace for trace in fig.data if trace.type == 'surface']
    np.testing.assert_allclose(np.asarray(surface_trace.z), surface.values['train_loss'])
    assert {trace.name for trace in fig.data if trace.type.startswith('scatter')} == {'trajectory', 'trajectory (3D)'}


# ----------------------------------------------------------------------------- 1D surfaces

def line_data(ax):
    return [(line.get_linestyle(), line.get_ydata()) for line in ax.lines]


def test_loss_curve_draws_train_and_test_loss_and_accuracy(files):
    surface = layout.read_surface(files['line'])
    fig = figures.loss_curve(surface, loss_max=4)
    ax_loss, ax_acc = fig.axes
    assert [style for style, _ in line_data(ax_loss)] == ['-', '--'] == [style for style, _ in line_data(ax_acc)]
    for (_, drawn), name in zip(line_data(ax_loss) + line_data(ax_acc), ('train_loss', 'test_loss', 'train_acc',
                                                                        'test_acc')):
        np.testing.assert_allclose(drawn, surface.values[name])
    assert ax_loss.get_ylim() == (0, 4) and ax_acc.get_ylim() == (0, 100)
    legend = ax_acc.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ['Training loss', 'Test loss', 'Training accuracy',
                                                                'Test accuracy']
    ax_loss, ax_acc = figures.loss_curve(files['line_no_test']).axes
    assert len(ax_loss.lines) == len(ax_acc.lines) == 1


def test_value_curve_draws_one_value(files):
    surface = layout.read_surface(files['line'])
    [ax] = figures.value_curve(surface, 'train_err', ylim=(0, 50)).axes
    [line] = ax.lines
    np.testing.assert_allclose(line.get_ydata(), 100 - surface.values['train_acc'])
    assert ax.get_ylabel() == 'Training error (%)' and ax.get_ylim() == (0, 50)


def test_eig_ratio_curve(files):
    surface = layout.read_surface(files['eig_line'])
    ratio = surface.values['min_eig'] / surface.values['max_eig']
    for signed, expected, ylim in ((False, np.abs(ratio), (0, 0.5)), (True, ratio, (-0.5, 0.5))):
        [ax] = figures.eig_ratio_curve(surface, signed=signed, ratio_max=0.5).axes
        [line] = ax.lines
        np.testing.assert_allclose(line.get_ydata(), expected)
        assert ax.get_ylim() == ylim


def test_overlaid_loss_curves_and_path_comparison(files, tmp_path):
    paths = [files['line'], surface_1d(tmp_path, name='second.h5'), surface_1d(tmp_path, name='third.h5')]
    ax_loss, ax_acc = figures.overlaid_loss_curves(paths).axes
    assert len(ax_loss.lines) == len(ax_acc.lines) == 6   # train and test of each of the three
    assert len(ax_acc.get_legend().get_texts()) == 4       # each kind of curve named once
    [ax] = figures.path_comparison(files['line'], paths[1], labels=('curve', 'line')).axes
    assert len(ax.lines) == 4
    texts = [text.get_text() for text in ax.get_legend().get_texts()]
    assert texts[0].startswith('curve: training loss (barrier ') and texts[2].startswith('line: training loss')


def test_spectrum_density(files):
    fig = figures.spectrum_density(files['spectrum'])
    [ax] = fig.axes
    [line] = ax.lines
    data, _ = layout.read_spectrum_file(files['spectrum'])
    np.testing.assert_allclose(line.get_xdata(), data['density_grid'])
    assert ax.get_yscale() == 'log'
    assert ax.get_title() == 'Hessian spectral density (330 parameters, 4 SLQ starts)'
    assert figures.spectrum_density(data, title='mine').axes[0].get_title() == 'mine'


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize('call, words', [
    (lambda f: figures.contour(f['surface'], vmin=5, vmax=1), ['vmin=5 must be below vmax=1']),
    (lambda f: figures.contour(f['surface'], vlevel=0), ['vlevel= must be positive']),
    (lambda f: figures.heatmap(f['surface'], vmin=2, vmax=2), ['vmin=2 must be below vmax=2']),
    (lambda f: figures.contour(f['line']), ['surface=', 'holds a 1D surface', 'needs a 2D one']),
    (lambda f: figures.loss_curve(f['surface']), ['surface=', 'holds a 2D surface', 'needs a 1D one']),
    (lambda f: figures.contour(f['surface'] + '.missing'), ["surface='", "' does not exist"]),
    (lambda f: figures.contour(42), ['surface= must be a Surface', 'not int']),
    (lambda f: figures.contour(f['surface'], surf_name='test_loss'), ["no 'test_loss'", 'train_loss']),
    (lambda f: figures.contour(f['surface'], dir_file=f['proj']), ['dir_file=', 'is not a direction file']),
    (lambda f: figures.trajectory(f['proj'] + '.missing'), ["proj_file='"]),
    (lambda f: figures.loss_curve(f['line'], loss_max=0), ['loss_max= must be a positive number']),
    (lambda f: figures.loss_curve(f['line'], xmin=0.5, xmax=0.2), ['pass xmin= below xmax=']),
    (lambda f: figures.eig_ratio_curve(f['line']), ["no 'min_eig' and 'max_eig'", 'hessian_eigen']),
    (lambda f: figures.overlaid_loss_curves([]), ['surfaces= is empty']),
    (lambda f: figures.path_comparison(f['line'], f['line'], labels=['one']), ['labels= must give two names']),
    (lambda f: figures.spectrum_density(f['surface']), ['is not a spectrum file']),
    (lambda f: figures.spectrum_density({}), ["spectrum= has no 'density'", 'hessian_spectrum.py --density']),
], ids=['levels-order', 'vlevel', 'heat-range', '1d-as-2d', '2d-as-1d', 'missing', 'not-a-surface',
        'no-such-value', 'bad-dir-file', 'missing-proj', 'loss-max', 'x-range', 'no-eig', 'no-surfaces',
        'one-label', 'not-spectrum', 'no-density'])
def test_bad_input_is_one_line_naming_the_keyword(files, call, words):
    with pytest.raises(UsageError) as refused:
        call(files)
    message = str(refused.value)
    assert '\n' not in message
    for word in words:
        assert word in message, (word, message)
    assert '--' not in message.replace('--density', ''), message   # the keyword, not the flag


def test_the_scripts_still_name_their_flags(files, capsys):
    from losslandscape import plot_1D, plot_2D
    with pytest.raises(UsageError, match='--vmin 5 must be below --vmax 1'):
        plot_2D.main(['--surf_file', files['surface'], '--vmin', '5', '--vmax', '1'])
    with pytest.raises(UsageError, match=r"--surf_file '.*' does not exist"):
        plot_1D.main(['--surf_file', files['line'] + '.missing'])
    with pytest.raises(UsageError, match=r"--compare '.*' does not exist"):
        plot_1D.main(['--surf_file', files['line'], '--compare', files['line'] + '.missing'])
    with pytest.raises(UsageError, match='plot it with plot_1D.py'):
        plot_2D.main(['--surf_file', files['line']])
