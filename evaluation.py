"""evaluation, for code written against the original: a classifier's loss and accuracy over a data set.

Its names are re-exported from losslandscape.training.evaluation (pip does not install this file;
``import losslandscape`` works from any folder).
"""
from losslandscape.training.evaluation import *  # noqa: F401,F403
