"""Flattening lists of tensors into one vector and back, and comparing directions.

A "direction" throughout the suite is a list of tensors shaped like the model's parameters (or its
state_dict entries); these helpers let linear algebra (cosine similarity, PCA) treat it as one vector.
Below them: the PCA directions of an optimizer trajectory and the projection of its checkpoints onto
two directions (plot_trajectory.py).
"""
import numpy as np
import torch

from losslandscape.directions import normalization
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout


def flatten(tensors):
    """Concatenate a list of tensors or arrays into one 1-D float64 numpy vector."""
    return np.concatenate([np.asarray(_to_numpy(t), dtype=np.float64).ravel() for t in tensors]) \
        if len(tensors) else np.zeros(0)


def unflatten(vector, like):
    """Split a 1-D vector into float32 tensors with the shapes of ``like`` (inverse of flatten)."""
    vector = np.asarray(vector)
    sizes = [int(np.prod(np.shape(t))) for t in like]
    if vector.size != sum(sizes):
        raise ValueError(f'vector of {vector.size} entries does not fit tensors of {sum(sizes)} entries')
    out, start = [], 0
    for t, n in zip(like, sizes):
        out.append(torch.from_numpy(vector[start:start + n].reshape(np.shape(t)).astype(np.float32)))
        start += n
    return out


def cosine_similarity(a, b):
    """cos(angle) between two directions (lists of tensors, or already flat vectors)."""
    va = a if isinstance(a, np.ndarray) and a.ndim == 1 else flatten(a)
    vb = b if isinstance(b, np.ndarray) and b.ndim == 1 else flatten(b)
    denom = np.linalg.norm(va) * np.linalg.norm(vb)
    return float(va @ vb / denom) if denom > 0 else 0.0


def _to_numpy(t):
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t


# ----------------------------------------------------------------------------- trajectory PCA
# The optimizer's path drawn in the plane of the two principal directions of its checkpoints
# (Li et al. 2018, section 7): each checkpoint is a point checkpoint - final in weight space.

PROJ_METHODS = ('cos', 'lstsq')
PCA_MIN_CHECKPOINTS = 3   # two checkpoints span a line: the second component would be arbitrary


def movable_mask(base, ignore=None):
    """Boolean vector over ``flatten(base)``: False where a trajectory direction must be zero.

    Integer buffers (num_batches_tracked) are never movable -- a step counter has no direction;
    with ignore='biasbn' neither are the dim <= 1 entries (biases, BatchNorm parameters/statistics)."""
    parts = []
    for t in base:
        t = torch.as_tensor(t)
        movable = t.is_floating_point() and not (ignore == 'biasbn' and t.dim() <= 1)
        parts.append(np.full(t.numel(), movable))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def checkpoint_offset(checkpoint, final, mask):
    """flatten(checkpoint) - ``final`` (the final model's flat vector) with the unmovable entries zeroed."""
    row = flatten(checkpoint)
    if row.size != final.size:
        raise ValueError(f'checkpoint of {row.size} entries does not fit the final model\'s {final.size}')
    row -= final
    row[~mask] = 0.0
    return row


def trajectory_matrix(final_base, checkpoints, ignore=None):
    """The (num_checkpoints, num_entries) float64 matrix whose rows are checkpoint - final.

    ``checkpoints`` is a sequence of bases (lists of tensors shaped like ``final_base``); it may
    load each one when indexed, so only the matrix itself is ever held in memory."""
    final, mask = flatten(final_base), movable_mask(final_base, ignore)
    matrix = np.empty((len(checkpoints), final.size), dtype=np.float64)
    for i, checkpoint in enumerate(checkpoints):
        matrix[i] = checkpoint_offset(checkpoint, final, mask)
    return matrix


def pca_directions(final_base, checkpoints, ignore=None):
    """The first two principal components of the trajectory, shaped like ``final_base``.

    Returns (xdirection, ydirection, extras) with extras the explained_variance_ratio_,
    singular_values_ and explained_variance_ of scikit-learn's PCA (keyed by the hdf5_layout
    constants). Memory: one float64 matrix of num_checkpoints x num_entries, centred in place."""
    from sklearn.decomposition import PCA

    if len(checkpoints) < PCA_MIN_CHECKPOINTS:
        raise UsageError(f'PCA of a trajectory needs at least {PCA_MIN_CHECKPOINTS} checkpoints, '
                         f'got {len(checkpoints)}')
    matrix = trajectory_matrix(final_base, checkpoints, ignore)
    if not np.any(matrix):
        raise UsageError('every checkpoint equals the final model: there is no trajectory to analyse')
    # arpack computes just the two components from matrix-vector products, and copy=False centres
    # in place: no second matrix, no num_checkpoints x num_entries right factor. Seeded, so the
    # same checkpoints always give the same directions (and the same file).
    pca = PCA(n_components=2, svd_solver='arpack', copy=False, random_state=0)
    pca.fit(matrix)
    del matrix  # scikit-learn squared it in place while computing the total variance
    mask = movable_mask(final_base, ignore)
    xdirection, ydirection = (unflatten(np.where(mask, pc, 0.0), final_base) for pc in pca.components_)
    extras = {hdf5_layout.EXPLAINED_VARIANCE_RATIO: pca.explained_variance_ratio_,
              hdf5_layout.SINGULAR_VALUES: pca.singular_values_,
              hdf5_layout.EXPLAINED_VARIANCE: pca.explained_variance_}
    return xdirection, ydirection, extras


def setup_PCA_directions(dir_file, final_base, checkpoints, ignore=None, attrs=None):
    """Compute the trajectory's PCA directions and write them to ``dir_file`` (direction file
    layout of hdf5_layout, plus the three PCA arrays). Returns (xdirection, ydirection, extras)."""
    xdirection, ydirection, extras = pca_directions(final_base, checkpoints, ignore)
    hdf5_layout.write_direction_file(dir_file, xdirection, ydirection, extras=extras, attrs=attrs)
    return xdirection, ydirection, extras


def project_trajectory(dir_file, base, checkpoints, method='cos', net=None):
    """Coordinates of every checkpoint - base in the plane of the directions of ``dir_file``.

    method 'cos' (the original's): x = <d, dx> / ||dx||, y = <d, dy> / ||dy||, exact when the
    directions are orthogonal (PCA components are). 'lstsq': the least-squares (x, y) with
    x dx + y dy closest to d, for directions that are not. Integer buffers never count.
    Returns (proj_xcoord, proj_ycoord) as float64 arrays, one entry per checkpoint. ``net``: the
    model whose centre ``base`` is, for a direction file in seed form (regenerated for it)."""
    if method not in PROJ_METHODS:
        raise ValueError(f'unknown projection method {method!r}; expected one of {PROJ_METHODS}')
    with hdf5_layout.open_direction_file(dir_file) as reader:
        seed_form = reader.form == hdf5_layout.SEED_FORM
        if seed_form and net is None:
            reader.refuse_seed_form()
    if seed_form:
        from losslandscape.directions import sources
        xdirection, ydirection = sources.read_whole(dir_file, net, [torch.as_tensor(w) for w in base], True)
    else:
        xdirection, ydirection, _ = hdf5_layout.read_direction_file(dir_file)
    if ydirection is None:
        raise UsageError(f'direction file {dir_file!r} has only an x direction; a trajectory needs two')
    normalization.check_direction_fits(xdirection, base, dir_file, 'x')
    normalization.check_direction_fits(ydirection, base, dir_file, 'y')
    final, mask = flatten(base), movable_mask(base)
    dx, dy = flatten(xdirection), flatten(ydirection)
    if method == 'cos':
        norms = np.array([np.linalg.norm(dx), np.linalg.norm(dy)])
        if not np.all(norms > 0):
            raise UsageError(f'direction file {dir_file!r} holds a zero direction; nothing to project on')
        to_coords = np.stack([dx / norms[0], dy / norms[1]])
    else:
        # The pseudo-inverse once: every checkpoint is then one 2 x N product.
        to_coords = np.linalg.pinv(np.stack([dx, dy], axis=1))
    coords = np.array([to_coords @ checkpoint_offset(c, final, mask) for c in checkpoints]).reshape(-1, 2)
    return coords[:, 0].copy(), coords[:, 1].copy()
