"""scheduler, for code written against the original: which grid points each MPI rank evaluates.

Its names are re-exported from losslandscape.parallel.scheduler (pip does not install this file;
``import losslandscape`` works from any folder).
"""
from losslandscape.parallel.scheduler import *  # noqa: F401,F403
