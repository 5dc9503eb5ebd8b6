"""The loss landscape of a trained PyTorch model (Li, Xu, Taylor, Studer, Goldstein, NeurIPS 2018).

From Python::

    import losslandscape
    s = losslandscape.surface(net, train_set, x=(-1, 1, 21), y=(-1, 1, 21), xnorm='filter', ynorm='filter',
                              surf_file='out/surface.h5')
    s.values['train_loss']                      # (21, 21): Z[i, j] at (x[j], y[i])
    losslandscape.read_surface('out/surface.h5')   # the same file, read back (or one the scripts wrote)
    losslandscape.figures.contour(s)            # its contours, a matplotlib Figure (shown inline in notebooks)

From the command line, every script as ``python -m losslandscape.<name>`` (``plot_surface``,
``plot_1D``, ``plot_2D``, ``plot_trajectory``, ``plot_hessian_eigen``, ``h52vtp``,
``hessian_spectrum``, ``sharpness``, ``train_curve``, ``train``), each with ``--help``.

Bad input raises ``UsageError`` with the scripts' one-line message (the scripts print it and exit
with status 2).
"""
# Set before the imports below: the modules they load record it in the files they write.
__version__ = '1.0.0'

from losslandscape import figures  # noqa: E402
from losslandscape.api import hessian_eigen, surface  # noqa: E402
from losslandscape.errors import UsageError  # noqa: E402
from losslandscape.io.hdf5_layout import Surface, read_surface  # noqa: E402

__all__ = [
    # computing
    'surface', 'hessian_eigen',
    # reading what was computed
    'read_surface', 'Surface',
    # drawing it (figures.contour, figures.loss_curve, ...: matplotlib Figures)
    'figures',
    # errors
    'UsageError',
    '__version__',
]
