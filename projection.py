"""projection, for code written against the original: flattening weights, PCA directions of a trajectory and its projection.

Its names are re-exported from losslandscape.directions.projection (pip does not install this file;
``import losslandscape`` works from any folder).
"""
from losslandscape.directions.projection import *  # noqa: F401,F403
