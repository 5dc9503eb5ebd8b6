"""The HDF5 contract between the compute step and the plot step: every name, shape and sentinel.

Every script reads and writes these files through this module; no other module spells a key.

Direction file (written by net_plotter / plot_trajectory, read by everything):
    xdirection/0 .. xdirection/N-1   one float32 dataset per tensor, in net.parameters() order
                                     ('weights') or state_dict() order ('states'), same shapes
    ydirection/0 .. ydirection/N-1   present for 2D surfaces
    explained_variance_ratio_, singular_values_, explained_variance_
                                     PCA directions only (plot_trajectory), length 2 each
    attrs                            how the directions were made (JSON strings; absent in old files).
                                     Every surface records the DIRECTION_ID of the directions it was
                                     computed along: a hash of their values (direction_content_id),
                                     so a file recreated under the same name with other values (PCA
                                     of new checkpoints, a retrained --model_file3) is never mixed
                                     with old surface values, while an identical one is accepted

Surface file (written by plot_surface / plot_hessian_eigen, read by the plot scripts):
    dir_file       string: the direction file the surface was computed along
    xcoordinates   float64 (nx,)
    ycoordinates   float64 (ny,), 2D only
    train_loss, train_acc, test_loss, test_acc, max_eig, min_eig, trace, hvp_count
                   float64 arrays of shape (ny, nx) for 2D with Z[i, j] = f(x[j], y[i]), or (nx,)
                   for 1D. Accuracies are percentages. NaN where not computed yet; a computed value
                   may itself be NaN or inf (a diverged point).
    done/<name>    bool array beside each value array: which points hold a result. This, not the
                   value, decides what a resumed run recomputes, so 0, negative, NaN and inf are all
                   results. Files from the original code have no done/ group: there a value of -1
                   (its fill value) means "not computed".
    attrs          'args' and 'versions' (JSON) and the identity fields of IDENTITY_FIELDS, so a run
                   pointed at a file made for another model, data or grid refuses instead of mixing.

Projection file (plot_trajectory): proj_xcoord, proj_ycoord (one entry per checkpoint), plus the
checkpoints' own train_loss / train_acc when evaluated.

Files are always created under a temporary name in the same folder and renamed into place, and a
surface file is updated the same way (copy, update, rename), so a killed run never leaves a
half-written file that a later run trusts.
"""
import contextlib
import json
import os
import shutil
import hashlib

import h5py
import numpy as np

from cli import UsageError
# The atomic replace and the lock live in file_safety; hdf5_layout.TMP_SUFFIX, .FileLock and
# .remove_stale_temporaries stay importable from here for the code that uses them.
from file_safety import TMP_SUFFIX, FileLock, atomic_path, remove_stale_temporaries  # noqa: F401

# Direction file keys.
XDIRECTION = 'xdirection'
YDIRECTION = 'ydirection'
EXPLAINED_VARIANCE_RATIO = 'explained_variance_ratio_'
SINGULAR_VALUES = 'singular_values_'
EXPLAINED_VARIANCE = 'explained_variance_'
PCA_KEYS = (EXPLAINED_VARIANCE_RATIO, SINGULAR_VALUES, EXPLAINED_VARIANCE)

# Surface file keys.
DIR_FILE = 'dir_file'
XCOORDINATES = 'xcoordinates'
YCOORDINATES = 'ycoordinates'
TRAIN_LOSS, TRAIN_ACC = 'train_loss', 'train_acc'
TEST_LOSS, TEST_ACC = 'test_loss', 'test_acc'
MAX_EIG, MIN_EIG, TRACE, HVP_COUNT = 'max_eig', 'min_eig', 'trace', 'hvp_count'
SURFACE_NAMES = (TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC, MAX_EIG, MIN_EIG, TRACE, HVP_COUNT)
DONE_GROUP = 'done'
LEGACY_MISSING = -1.0   # the original code's fill value for "not computed yet"

# Projection file keys.
PROJ_XCOORD, PROJ_YCOORD = 'proj_xcoord', 'proj_ycoord'

# Attributes.
ARGS_ATTR, VERSIONS_ATTR = 'args', 'versions'
DIRECTION_ID = 'direction_id'
# The fields that say what a surface was computed for; a resumed run must agree on each one.
IDENTITY_FIELDS = ('model', 'model_file', 'model_file2', 'model_file3', 'dir_type', 'dataset',
                   'raw_data', 'data_split', 'split_idx', 'loss_name', 'train_labels', DIRECTION_ID)


# ----------------------------------------------------------------------------- file primitives

@contextlib.contextmanager
def atomic_h5(path, copy_existing=False):
    """Yield an h5py.File to fill, under a temporary name beside ``path``; rename it over
    ``path`` only when the block finishes without error (file_safety.atomic_path). With
    ``copy_existing`` the temporary file starts as a copy of ``path`` (an in-place update that a
    kill cannot tear)."""
    with atomic_path(path) as tmp:
        if copy_existing:
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, 'r+' if copy_existing else 'w') as f:
            yield f


def open_h5(path, what='file'):
    """Open an existing HDF5 file read-only, or raise UsageError saying why it cannot be read."""
    if not os.path.exists(path):
        raise UsageError(f'{what} {path!r} does not exist')
    try:
        return h5py.File(path, 'r')
    except OSError as err:
        raise UsageError(f'{what} {path!r} is not a readable HDF5 file ({_first_line(err)})') from None


def _first_line(err):
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _as_str(value):
    if isinstance(value, np.ndarray):
        value = value[()]
    return value.decode() if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------- directions

def _write_tensor_list(f, name, arrays):
    group = f.create_group(name)
    for i, a in enumerate(arrays):
        group.create_dataset(str(i), data=np.asarray(a))


def _read_tensor_list(group):
    # Datasets are named "0".."N-1"; sort numerically ("10" after "9").
    return [group[k][()] for k in sorted(group.keys(), key=int)]


def write_direction_file(path, xdirection, ydirection=None, extras=None, attrs=None):
    """Write a direction file atomically. ``extras``: extra datasets (e.g. the PCA arrays)."""
    with atomic_h5(path) as f:
        _write_tensor_list(f, XDIRECTION, xdirection)
        if ydirection is not None:
            _write_tensor_list(f, YDIRECTION, ydirection)
        for key, value in (extras or {}).items():
            f[key] = np.asarray(value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = json.dumps(value)


def direction_content_id(path, with_y):
    """The DIRECTION_ID a surface along ``path`` records: a hash of the x direction's values (and
    the y direction's, for a 2D surface). A 1D surface keeps its id when a y direction is added to
    its file later; the same values written again give the same id."""
    xdirection, ydirection, _ = read_direction_file(path)
    digest = hashlib.sha256()
    for axis, direction in (('x', xdirection), ('y', ydirection if with_y else None)):
        if direction is None:
            continue
        digest.update(axis.encode())
        for array in direction:
            array = np.ascontiguousarray(array, dtype=np.float32)
            digest.update(repr(array.shape).encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:32]


def read_creation_tag(path):
    """The random DIRECTION_ID that direction files of this suite's first versions were given at
    creation (None for every other file): surfaces made then recorded it instead of the hash."""
    with open_h5(path, 'direction file') as f:
        return json.loads(f.attrs[DIRECTION_ID]) if DIRECTION_ID in f.attrs else None


def read_direction_file(path):
    """Return (xdirection, ydirection or None, extras dict) as lists of numpy arrays."""
    with open_h5(path, 'direction file') as f:
        if XDIRECTION not in f or not isinstance(f[XDIRECTION], h5py.Group):
            raise UsageError(f'{path!r} is not a direction file (it has no {XDIRECTION!r} group)')
        try:
            xdirection = _read_tensor_list(f[XDIRECTION])
            ydirection = _read_tensor_list(f[YDIRECTION]) if YDIRECTION in f else None
        except (ValueError, OSError) as err:
            raise UsageError(f'direction file {path!r} is damaged ({_first_line(err)})') from None
        extras = {k: f[k][()] for k in PCA_KEYS if k in f}
    return xdirection, ydirection, extras


def read_direction_facts(path, what='direction file'):
    """(explained_variance_ratio_ as a flat float64 array, empty where the file has none; its
    attributes, decoded_attrs) of a direction file: what its axis labels are made of, without
    reading the directions themselves. ``what`` names the file (or flag) in errors."""
    with open_h5(path, what) as f:
        if XDIRECTION not in f:
            raise UsageError(f'{what} {path!r} is not a direction file (it has no {XDIRECTION!r})')
        try:
            ratio = np.asarray(f[EXPLAINED_VARIANCE_RATIO][()], dtype=np.float64).ravel() \
                if EXPLAINED_VARIANCE_RATIO in f else np.empty(0)
            attrs = decoded_attrs(f.attrs)
        except (OSError, ValueError) as err:
            raise UsageError(f'{what} {path!r} is damaged ({_first_line(err)})') from None
    return ratio, attrs


def decoded_attrs(attrs):
    """The JSON-valued attributes (this suite's records) of a file's ``attrs`` mapping, decoded;
    values that are not JSON (written by someone else) are left out."""
    decoded = {}
    for key, value in attrs.items():
        try:
            decoded[key] = json.loads(value)
        except (TypeError, ValueError):
            continue
    return decoded


# ----------------------------------------------------------------------------- surfaces

class Surface:
    """A surface file read into memory: coordinates, value arrays and their done masks."""

    def __init__(self, path, dir_file, xcoordinates, ycoordinates, values, done, attrs):
        self.path, self.dir_file = path, dir_file
        self.xcoordinates, self.ycoordinates = xcoordinates, ycoordinates
        self.values, self.done, self.attrs = values, done, attrs

    @property
    def shape(self):
        return self.xcoordinates.shape if self.ycoordinates is None else \
            (len(self.ycoordinates), len(self.xcoordinates))

    def args(self):
        return json.loads(self.attrs[ARGS_ATTR]) if ARGS_ATTR in self.attrs else {}


def read_surface(path):
    """Read a surface file (ours or the original code's) or raise UsageError saying what is wrong."""
    with open_h5(path, 'surface file') as f:
        if XCOORDINATES not in f:
            raise UsageError(f'{path!r} is not a surface file (it has no {XCOORDINATES!r})')
        try:
            x = np.asarray(f[XCOORDINATES][()], dtype=np.float64).ravel()
            y = np.asarray(f[YCOORDINATES][()], dtype=np.float64).ravel() if YCOORDINATES in f else None
            shape = x.shape if y is None else (len(y), len(x))
            dir_file = _as_str(f[DIR_FILE][()]) if DIR_FILE in f else ''
            values, done = {}, {}
            for name in f:
                node = f[name]
                if name in (XCOORDINATES, YCOORDINATES, DIR_FILE) or not isinstance(node, h5py.Dataset):
                    continue
                array = np.asarray(node[()])
                legacy = DONE_GROUP not in f
                if legacy and y is not None and array.shape == (len(x), len(y)) != shape:
                    # The original code stored non-square grids as (nx, ny) arrays filled in
                    # (ny, nx) row-major order; the flat data is right, only the shape is not.
                    array = array.reshape(shape)
                if array.shape != shape:
                    continue  # not a per-point array (e.g. a scalar someone added)
                values[name] = array.astype(np.float64)
                if DONE_GROUP in f and name in f[DONE_GROUP]:
                    done[name] = np.asarray(f[DONE_GROUP][name][()], dtype=bool)
                else:
                    done[name] = values[name] != LEGACY_MISSING
            attrs = {k: _as_str(v) for k, v in f.attrs.items()}
        except (OSError, ValueError, KeyError) as err:
            raise UsageError(f'surface file {path!r} is damaged ({_first_line(err)})') from None
    return Surface(path, dir_file, x, y, values, done, attrs)


class SurfaceWriter:
    """The only writer of one surface file (MPI rank 0): holds the lock, keeps the arrays in
    memory, and rewrites the file atomically on ``flush``.

    Opening validates an existing file against the requested grid, direction file and identity,
    and adds any value arrays it lacks (NaN, not done) -- e.g. test_loss or max_eig later on.
    A value already stored is never replaced: a point is evaluated for its missing values only
    (``missing``), and ``record`` keeps what was there. ``by_products`` (among ``value_names``) are
    recorded when their point is computed but never make a point pending (hvp_count, which files of
    the original code lack, counts the products of eigenvalues computed now)."""

    def __init__(self, path, grid, dir_file, value_names, identity, attrs, by_products=()):
        self.path, self.grid, self.value_names = path, grid, tuple(value_names)
        self.required_names = tuple(n for n in self.value_names if n not in by_products)
        self.lock = FileLock(path).acquire()
        self.dirty = False
        remove_stale_temporaries(path)   # a killed writer's leftovers; we hold the lock now
        try:
            self._open(dir_file, identity, attrs)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, dir_file, identity, attrs):
        shape = self.grid.shape
        self.values = {n: np.full(shape, np.nan) for n in self.value_names}
        self.done = {n: np.zeros(shape, dtype=bool) for n in self.value_names}
        self.exists = os.path.exists(self.path)
        if self.exists:
            old = read_surface(self.path)
            check_surface_matches(old, self.grid, dir_file, identity)
            for n in self.value_names:
                if n in old.values:
                    self.values[n], self.done[n] = old.values[n].copy(), old.done[n].copy()
        self.new_names = [n for n in self.value_names if not self.exists or n not in old.values]
        self.dir_file, self.identity, self.attrs = dir_file, identity, attrs
        if not self.exists:
            self.flush(force=True)  # the file exists (empty) from the first moment on
        elif self.new_names:
            self.flush(force=True)

    def pending(self):
        """Flat indices of the points where any (required) value is still missing, in order."""
        missing = np.zeros(self.grid.shape, dtype=bool)
        for n in self.required_names:
            missing |= ~self.done[n]
        return np.flatnonzero(missing.ravel())

    def missing(self, k):
        """The required value names not yet stored at flat point ``k``."""
        index = self.grid.index(k)
        return tuple(n for n in self.required_names if not self.done[n][index])

    def record(self, k, results):
        """Store the values of point ``k`` that are still missing; ``results`` must hold every
        missing required one (it may hold more: those already stored are kept)."""
        index = self.grid.index(k)
        for n in self.value_names:
            if self.done[n][index] or (n not in results and n not in self.required_names):
                continue
            self.values[n][index] = results[n]
            self.done[n][index] = True
        self.dirty = True

    def flush(self, force=False):
        if not (self.dirty or force):
            return
        with atomic_h5(self.path, copy_existing=self.exists) as f:
            if not self.exists:
                f[DIR_FILE] = self.dir_file
                f[XCOORDINATES] = self.grid.xcoordinates
                if self.grid.is_2d:
                    f[YCOORDINATES] = self.grid.ycoordinates
                f.attrs.update({k: json.dumps(v) for k, v in self.identity.items()})
            for key, value in self.attrs.items():
                f.attrs[key] = json.dumps(value)
            done_group = f.require_group(DONE_GROUP)
            for n in self.value_names:
                _overwrite(f, n, self.values[n])
                _overwrite(done_group, n, self.done[n])
        self.exists, self.dirty = True, False

    def close(self):
        try:
            self.flush()
        finally:
            self.lock.release()


def _overwrite(group, name, array):
    if name in group and group[name].shape == array.shape and group[name].dtype == array.dtype:
        group[name][...] = array
    else:
        if name in group:
            del group[name]
        group.create_dataset(name, data=array)


def check_surface_matches(surface, grid, dir_file, identity):
    """Raise UsageError if an existing surface file was made for another grid, direction file
    or model/data (identity fields stored in its attributes; files without them are not checked)."""
    path = surface.path
    if (surface.ycoordinates is None) != (not grid.is_2d):
        kind = '2D' if surface.ycoordinates is not None else '1D'
        raise UsageError(f'surface file {path!r} holds a {kind} grid; pass its own --x/--y or another --surf_file')
    for flag, stored, wanted in (('--x', surface.xcoordinates, grid.xcoordinates),
                                 ('--y', surface.ycoordinates, grid.ycoordinates)):
        if wanted is not None and (stored.shape != wanted.shape or not np.allclose(stored, wanted, rtol=0, atol=1e-12)):
            raise UsageError(f'surface file {path!r} was made for another grid ({flag} '
                             f'{stored[0]:g}:{stored[-1]:g}:{len(stored)}); pass the same {flag} or another --surf_file')
    if surface.dir_file and dir_file and os.path.abspath(surface.dir_file) != os.path.abspath(dir_file) \
            and os.path.basename(surface.dir_file) != os.path.basename(dir_file):
        raise UsageError(f'surface file {path!r} was made along direction file {surface.dir_file!r}, '
                         f'not {dir_file!r}; pass another --surf_file')
    for key, wanted in identity.items():
        if key in surface.attrs:
            stored = json.loads(surface.attrs[key])
            if key == DIRECTION_ID:
                if stored != wanted and stored != read_creation_tag(dir_file):
                    raise UsageError(f'surface file {path!r} was computed along other directions than those now '
                                     f'in direction file {dir_file!r} (recreated since with other values); '
                                     'pass another --surf_file')
            elif stored != wanted:
                raise UsageError(f'surface file {path!r} was made with {key}={stored!r}, not {wanted!r}; '
                                 'pass another --surf_file')


def write_projection_file(path, proj_xcoord, proj_ycoord, extras=None, attrs=None):
    """Write a trajectory projection file atomically (see the module docstring)."""
    with atomic_h5(path) as f:
        f[PROJ_XCOORD] = np.asarray(proj_xcoord, dtype=np.float64)
        f[PROJ_YCOORD] = np.asarray(proj_ycoord, dtype=np.float64)
        for key, value in (extras or {}).items():
            f[key] = np.asarray(value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = json.dumps(value)


def read_projection_file(path):
    """Return a dict of the projection file's datasets (proj_xcoord, proj_ycoord, ...)."""
    with open_h5(path, 'projection file') as f:
        if PROJ_XCOORD not in f or PROJ_YCOORD not in f:
            raise UsageError(f'{path!r} is not a projection file (it has no {PROJ_XCOORD!r}/{PROJ_YCOORD!r})')
        return {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
