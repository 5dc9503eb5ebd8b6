"""Curves between two trained models (Bezier, polychain): parametrisation, training, their plane;
BatchNorm statistics recomputed for the weights at a point.
"""

from losslandscape.curves.bn_statistics import recompute
from losslandscape.curves.connecting_curves import Curve, load_curve, plane_coordinates

__all__ = [
    # connecting_curves
    'Curve', 'load_curve', 'plane_coordinates',
    # bn_statistics
    'recompute',
]
