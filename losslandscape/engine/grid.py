"""The evaluation grid: parsing ``--x/--y MIN:MAX:NUM``, coordinates, and the point numbering.

Points are numbered row-major over the surface array shape: a 2D grid has shape (len(y), len(x)) and
point k sits at row i = k // len(x) (the y index), column j = k % len(x) (the x index), so
``Z[i, j] = f(x[j], y[i])`` -- the matplotlib ``meshgrid`` convention, and exactly the content of
the original code's square files. A 1D grid has shape (len(x),).
"""
import dataclasses
import math

import numpy as np

from losslandscape.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Axis:
    """One grid axis: ``num`` evenly spaced coordinates from ``min`` to ``max`` inclusive."""
    min: float
    max: float
    num: int

    @property
    def coordinates(self):
        return np.linspace(self.min, self.max, num=self.num, dtype=np.float64)

    def label(self):
        """The '[min,max,num]' part of the default surface file name (the original's format)."""
        return f'[{self.min!s},{self.max!s},{self.num:d}]'


def parse_axis(spec, flag='--x'):
    """Parse 'MIN:MAX:NUM' (e.g. '-1:1:51', '0:1:11'); raise UsageError naming ``flag`` if malformed."""
    parts = str(spec).split(':')
    if len(parts) != 3:
        raise UsageError(f'{flag}={spec!r}: expected MIN:MAX:NUM, e.g. {flag}=-1:1:51')
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise UsageError(f'{flag}={spec!r}: MIN and MAX must be numbers') from None
    try:
        num = int(parts[2])
    except ValueError:
        raise UsageError(f'{flag}={spec!r}: NUM must be a whole number of points') from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UsageError(f'{flag}={spec!r}: MIN and MAX must be finite')
    if num < 1:
        raise UsageError(f'{flag}={spec!r}: NUM must be at least 1')
    if lo > hi:
        raise UsageError(f'{flag}={spec!r}: MIN must not exceed MAX')
    if num > 1 and lo == hi:
        raise UsageError(f'{flag}={spec!r}: MIN equals MAX, so NUM must be 1')
    return Axis(lo, hi, num)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A 1D (``y is None``) or 2D grid of evaluation points."""
    x: Axis
    y: Axis = None

    @classmethod
    def from_coordinates(cls, xcoordinates, ycoordinates=None):
        """Rebuild a grid from stored coordinate arrays (e.g. to validate a resumed file)."""
        def axis(c):
            c = np.asarray(c, dtype=np.float64).ravel()
            return Axis(float(c[0]), float(c[-1]), len(c))
        return cls(axis(xcoordinates), None if ycoordinates is None else axis(ycoordinates))

    @property
    def is_2d(self):
        return self.y is not None

    @property
    def shape(self):
        return (self.y.num, self.x.num) if self.is_2d else (self.x.num,)

    @property
    def num_points(self):
        return int(np.prod(self.shape))

    @property
    def xcoordinates(self):
        return self.x.coordinates

    @property
    def ycoordinates(self):
        return self.y.coordinates if self.is_2d else None

    def point(self, k):
        """Coordinates of point ``k``: (x, y) with y = None on a 1D grid."""
        if not 0 <= k < self.num_points:
            raise IndexError(f'point {k} outside a grid of {self.num_points} points')
        if not self.is_2d:
            return float(self.xcoordinates[k]), None
        i, j = divmod(int(k), self.x.num)
        return float(self.xcoordinates[j]), float(self.ycoordinates[i])

    def index(self, k):
        """Array index of point ``k`` in a surface array of ``self.shape``."""
        return np.unravel_index(int(k), self.shape)

    def label(self):
        """The '_[xmin,xmax,nx]x[ymin,ymax,ny]' part of the default surface file name."""
        return '_' + self.x.label() + ('x' + self.y.label() if self.is_2d else '')
