"""The compute configuration of a grid run -- memory layout, batch size, BatchNorm folding -- chosen
for the machine at hand, recorded in the surface file and reused when the run resumes.

A configuration changes how a point's values are computed, never what: each choice changes only
the float32 rounding (the loss stays the mean over the whole data set, whatever the batch size).
``choose`` settles it once per run, on rank 0 (every MPI rank then uses rank 0's), part by part:

  1. a flag given explicitly (--batch_size, --channels_last / --no-channels_last, --fold_bn /
     --no-fold_bn) fixes its part -- but never against a surface file's record: a resumed run whose
     flags would change a recorded part is refused (refuse_changed_parts), as is one that adds or
     drops --amp (an identity field, run_setup.run_identity);
  2. with --compute_config plain the other parts are PLAIN, the suite's former defaults (NCHW,
     batch 128, unfolded: the original code's arithmetic);
  3. when the surface file exists, the other parts are what it records (hdf5_layout.COMPUTE_ATTR;
     in a file written before configurations were recorded, what its recorded flags say, else
     PLAIN), so a resumed run computes its points exactly as the first run did and ends with the
     values an uninterrupted run gives, bit for bit;
  4. otherwise, under auto (the default), they are what an earlier timing of the same model, data
     and flags on this machine chose, when the machine's timing cache holds one (timing_cache.py);
  5. otherwise they are timed -- always with --compute_config search; with auto when
     the run is long enough to pay for it (its estimated time at least MIN_RUN_SECONDS and the
     timing at most SEARCH_SHARE of it), else PLAIN. The probe: the first training samples (as
     many as the largest candidate batch size) at the centre. Timed first is the configuration
     with every free part plain (the estimate of the run's time). BatchNorm is then folded by rule
     wherever the model folds (on the CPU the ReLU and residual addition after each convolution
     are fused into it too, see bn_folding.py): it only removes work, so one pass just checks its
     loss. Then, step by step, channels_last against the best so far and the other batch sizes:
     each step's configurations in interleaved passes (Search.compare), the fastest pass of each
     counting. A candidate whose probe loss differs from that of the configuration with every
     free part plain by more than VALUE_RTOL (relative) is discarded.
     A timed choice goes into the timing cache, so the next such run on this machine starts at once.

Whatever the configuration, ``keep_freed_memory`` (called first by every run) stops glibc's malloc
from handing freed activations back to the kernel: without it each batch's activations of a few MB
are mapped afresh, and the page faults of touching them cost as much as the convolutions of an NCHW
batch of 128 (2.4x the time per point on resnet20, benchmarks/RESULTS.md).

The Hessian scripts (``kind`` HESSIAN: plot_hessian_eigen.py) take parts 1-4 the same way and are
never folded (the Hessian is of the unfolded weights) and never laid out channels_last unless
given (slower for double back-propagation, benchmarks/RESULTS.md); part 5 times the batch size
alone, by Hessian-vector products on the probe samples rather than forward passes, whose speed
does not predict theirs (HessianSearch).
hessian_spectrum.py and sharpness.py, which measure one point and write no surface file, time the
batch size alone too (choose_point_batch_size: given, plain, cached or timed): by Hessian-vector
products (HessianSearch) and by gradients over the probe samples (GradientSearch).
--amp is a flag of its own, never chosen: it changes the values by far more than rounding.
"""
import dataclasses
import math
import sys

from losslandscape.compute import configuration, timing_cache, timing_search
from losslandscape.curvature import hessian
from losslandscape.data import batch_sources


def choose(settings, comm, kind, surf_file, net, the_objective, train_data, test_data, device, num_points,
           threads=''):
    """The run's Choice, decided on rank 0 and broadcast (see the module docstring); rank 0 prints
    its line, ending with ``threads`` (what runtime.set_threads said). ``net`` is left on
    ``device`` in its own (contiguous) layout, in eval mode."""
    choice = comm.root_only(lambda: _decide(settings, comm, kind, surf_file, net, the_objective,
                                            train_data, test_data, device, num_points))
    config, line, record = choice
    if threads and device.type == 'cpu':
        line += f'; {threads}'
    if comm.is_root:
        print(line, flush=True)
    return configuration.Choice(configuration.ComputeConfig(**config), line, record)


def _decide(settings, comm, kind, surf_file, net, the_objective, train_data, test_data, device, num_points):
    """(configuration as a dict, the line, the record): rank 0's decision."""
    given = configuration.given_parts(settings)
    shown = ', '.join(f'{configuration.flag_text(name, value)} given' for name, value in given.items())
    if kind == configuration.HESSIAN:
        given.setdefault('fold_bn', False)
    entry_parts, record = configuration.recorded_parts(surf_file, kind)
    if all(name in given for name in configuration.FIELDS):
        config, how, why, shown = configuration.ComputeConfig(**given), 'given', 'as given', ''
    elif settings.compute_config == 'plain':
        config, how, why = configuration.with_parts(configuration.PLAIN, given), 'plain', '--compute_config plain'
    elif entry_parts is not None:
        config, how = configuration.with_parts(configuration.ComputeConfig(**entry_parts), given), 'reused'
        why = (f'reused from {surf_file!r}' if kind in record else f'as {surf_file!r} was computed, by its '
               'recorded flags') + ': the points added are computed as its others were'
    else:
        config, how, why = _timed(settings, kind, net, the_objective, train_data, test_data, device, given,
                                  math.ceil(num_points / comm.size))
    # An entry that still holds is kept as it is, so a resumed run leaves the file's attributes alone.
    kept = record.get(kind)
    entry = kept if configuration.valid_parts(kept) == dataclasses.asdict(config) else {**dataclasses.asdict(config), 'how': how}
    amp = ', bf16 autocast (--amp)' if settings.amp else ''
    line = f'compute: {config.describe()}{amp} ({why}' + (f'; {shown}' if shown else '') + ')'
    return dataclasses.asdict(config), line, {**record, kind: entry}


def _timed(settings, kind, net, the_objective, train_data, test_data, device, given, points_per_rank):
    """Parts 4 and 5: (configuration, how, why) from the machine's timing cache under auto, else timed
    (and then cached, timing_cache.py)."""
    always = settings.compute_config == 'search'
    if kind == configuration.HESSIAN:
        params = hessian.hessian_parameters(net, settings.directions.include_params, settings.directions.exclude_params)
        search = timing_search.HessianSearch(net, the_objective, train_data, device, params, given, free=settings.ngpu == 1)
        timed = lambda: search.run(always, points_per_rank)
    else:
        search = timing_search.Search(settings, net, the_objective, train_data, device, given)
        samples = _samples_per_point(settings, train_data, test_data)
        timed = lambda: search.run(always, samples, points_per_rank)
    return _cached_or_timed(search, always, timed)


def _cached_or_timed(search, always, timed=None):
    """(configuration, how, why) from the machine's timing cache (unless ``always``), else from
    ``timed()`` (default: ``search.run(always, 1)``, one unit of work), cached when it timed."""
    key = search.cache_key()
    cached = None if always or key is None else timing_cache.lookup(key)
    parts = configuration.valid_parts(cached)
    if parts is not None and isinstance(cached.get('why'), str):
        where = timing_cache.cache_file()
        return configuration.ComputeConfig(**parts), 'cached', (f'timed on this machine on {cached.get("stored", "an earlier run")}, '
                                                  f'kept in {where}: {cached["why"]}; --compute_config search times '
                                                  'it again')
    config, how, why = timed() if timed is not None else search.run(always, 1)
    if how == 'search' and key is not None and not timing_cache.store(key, {**dataclasses.asdict(config), 'why': why}) \
            and timing_cache.cache_file() is not None:
        print(f'warning: could not write the timing cache {timing_cache.cache_file()}: a later run of this model '
              f'times its configuration again (set ${timing_cache.ENV_VARIABLE} to a writable folder, or empty to '
              'keep no cache)', file=sys.stderr, flush=True)
    return config, how, why


def _samples_per_point(settings, train_data, test_data):
    """Samples one grid point passes through the model (more than one pass over the training data
    when statistics are recomputed, or with --eval_test)."""
    samples = train_data.num_samples * (2 if settings.recomputes_statistics else 1)
    return samples + (test_data.num_samples if test_data is not None else 0)


def choose_point_batch_size(comm, point, mode, make_search):
    """The one-point scripts (hessian_spectrum.py, sharpness.py) without --batch_size: the batch size
    of ``point.data`` (run_setup.Point), timed on rank 0 by ``make_search()`` (a HessianSearch or
    GradientSearch of one unit) under ``mode`` (MODES), and taken by every rank; rank 0 says which in
    one line. The batch size changes only rounding: the loss is the mean over the whole data set."""
    if mode == 'plain':
        chosen, why = configuration.PLAIN, '--compute_config plain'
    else:
        chosen, _, why = comm.root_only(lambda: _cached_or_timed(make_search(), mode == 'search'))
    if comm.is_root:
        threads = f'; {point.threads}' if point.threads and point.device.type == 'cpu' else ''
        print(f'compute: batch {chosen.batch_size} ({why}){threads}', flush=True)
    if isinstance(point.data, batch_sources.CachedBatches):   # batched as it is read; other sources keep theirs
        point.data.batch_size = chosen.batch_size
    return chosen.batch_size
