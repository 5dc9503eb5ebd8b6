"""Evaluation on a budget: every point on the same seeded subset of the data, of a size given
(--samples N) or chosen at the centre for a stated precision (--target_stderr R).

The subset is datasets.sample_indices(split size, N, --sample_seed): the first N of a seeded
permutation of the (--data_split part of the) split, so subsets of one seed are nested. --target_stderr
evaluates the centre on TARGET_START samples, then on twice as many, and so on (the whole split
last), and takes the first size whose relative standard error of the loss, loss_stderr / |loss|,
is at most R: rank 0 chooses it, says it on one line, and every rank uses it. The surface file
records N (hdf5_layout.SAMPLES) with the seed and the target, so a resumed run (with the same
--target_stderr) takes the recorded N without searching again, and one with another is refused.
"""
import dataclasses
import json
import os

from losslandscape.compute import configuration
from losslandscape.io import hdf5_layout
from losslandscape.objectives import objective

TARGET_START = 256   # the first size tried: below it a standard error is itself too uncertain to aim with


def candidate_sizes(total, start=TARGET_START):
    """The sizes --target_stderr tries, in order: start, 2 start, 4 start, ... below ``total``, then ``total``."""
    sizes, size = [], start
    while size < total:
        sizes.append(size)
        size *= 2
    return sizes + [total]


def recorded_samples(surf_file, target_stderr):
    """The N an existing surface file chose for this ``target_stderr``, or None (no file, or a file
    made otherwise: check_surface then refuses it, naming what differs)."""
    if not os.path.exists(surf_file):
        return None
    attrs = hdf5_layout.read_surface(surf_file).attrs
    stored = json.loads(attrs[hdf5_layout.TARGET_STDERR]) if hdf5_layout.TARGET_STDERR in attrs else None
    if stored != target_stderr or hdf5_layout.SAMPLES not in attrs:
        return None
    return json.loads(attrs[hdf5_layout.SAMPLES])


def search(split, target, evaluate_size):
    """(the size chosen, its values at the centre, whether they meet ``target``) for an OpenSplit
    ``split``: the first of candidate_sizes whose relative standard error of the loss is at most
    ``target``, else the whole split. ``evaluate_size(n)``: the centre's values on n samples."""
    for size in candidate_sizes(len(split)):
        values = evaluate_size(size)
        if relative_stderr(values) <= target:
            return size, values, True
    return size, values, False


def relative_stderr(values):
    loss, stderr = values[objective.LOSS], values[hdf5_layout.stderr_name(objective.LOSS)]
    return stderr / abs(loss) if loss else float('inf')


def settle_samples(settings, comm, surf_file, net, the_objective, device, train_dataset=None):
    """``settings`` with ``samples`` set for its ``target_stderr``: recorded in ``surf_file``, or
    searched for on rank 0 with ``net`` at the centre (and said in one line) and broadcast."""
    def choose():
        recorded = recorded_samples(surf_file, settings.target_stderr)
        if recorded is not None or os.path.exists(surf_file):
            return recorded   # None: the file was made otherwise, and check_surface says how
        split = settings.open_split(True, train_dataset)

        def evaluate_size(size):
            source = split.source(settings.batch_size or configuration.PLAIN.batch_size, device, settings.data_mode,
                                  settings.workers, share=comm.local_size, samples=size,
                                  sample_seed=settings.sample_seed)
            return objective.evaluate(net, source, the_objective, settings.amp)
        size, values, met = search(split, settings.target_stderr, evaluate_size)
        stderr = values[hdf5_layout.stderr_name(objective.LOSS)]
        print(f'--target_stderr {settings.target_stderr:g}: {size} of the {len(split)} training samples '
              f'(--sample_seed {settings.sample_seed}) at every point; the centre\'s training loss '
              f'{values[objective.LOSS]:.6g} +- {stderr:.3g} (relative {relative_stderr(values):.3g})'
              + ('' if met else f', the whole training set: it does not reach {settings.target_stderr:g}'), flush=True)
        return size
    return dataclasses.replace(settings, samples=comm.root_only(choose))
