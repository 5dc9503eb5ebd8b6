"""The console commands pip installs (``losslandscape-plot-surface`` ...): each runs one script's
``main`` as ``python -m losslandscape.<script>`` does, with the same flags and exit statuses.
The ``-m`` form is the contract; these are a convenience on top. Each imports its script when
called, so a command's start-up loads its own script only."""
import importlib

from losslandscape.cli.parsing import run_as_script


def _run(script):
    run_as_script(importlib.import_module(f'losslandscape.{script}').main)


def plot_surface():
    _run('plot_surface')


def plot_1D():
    _run('plot_1D')


def plot_2D():
    _run('plot_2D')


def plot_trajectory():
    _run('plot_trajectory')


def plot_hessian_eigen():
    _run('plot_hessian_eigen')


def h52vtp():
    _run('h52vtp')


def hessian_spectrum():
    _run('hessian_spectrum')


def sharpness():
    _run('sharpness')


def train_curve():
    _run('train_curve')


def train():
    _run('train')
