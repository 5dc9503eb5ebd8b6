"""Deterministic, architecture-independent weights for the model-zoo checkpoint tests.

Re-creates the recipe behind tests/fixtures/reference/golden_logits.pt: the golden logits are the
reference architectures' outputs with these weights, so any state_dict layout gets the very same
tensors here, on any machine, without shipping checkpoints.
"""
import math
import zlib

import torch


def synthetic_tensor(key: str, shape: list[int], dtype: str) -> torch.Tensor:
    """One state_dict entry, drawn from a generator seeded by the CRC-32 of its key."""
    if dtype == "int64":  # num_batches_tracked
        return torch.zeros(shape, dtype=torch.int64)
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64)
    if key.endswith("running_var"):
        values = 0.5 + uniform  # strictly positive
    elif len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        values = (2 * uniform - 1) * math.sqrt(6.0 / fan_in)  # He-uniform conv / linear weights
    elif key.endswith("weight"):
        values = 0.5 + uniform  # BatchNorm scale
    else:
        values = (uniform - 0.5) * 0.2  # biases, BatchNorm shift, running_mean
    return values.to(torch.float32)


def synthetic_state_dict(layout: list[list]) -> dict[str, torch.Tensor]:
    """All entries of a layout: rows of [key, shape, dtype] as in cifar10_state_dict_layouts.json."""
    return {key: synthetic_tensor(key, shape, dtype) for key, shape, dtype in layout}
