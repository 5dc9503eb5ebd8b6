"""Flattening lists of tensors into one vector and back, and comparing directions.

A "direction" throughout the suite is a list of tensors shaped like the model's parameters (or its
state_dict entries); these helpers let linear algebra (cosine similarity, PCA) treat it as one vector.
"""
import numpy as np
import torch


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
