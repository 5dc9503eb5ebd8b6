"""Timing compute configurations on the machine at hand: the forward-pass search over layout,
folding and batch size (Search), and the batch-size searches by Hessian-vector products
(HessianSearch) and by gradients (GradientSearch), each on the first training samples (Probe)."""
import dataclasses
import math
import time

import numpy as np
import torch
from torch import nn

from losslandscape.compute import bn_folding, configuration, runtime, timing_cache
from losslandscape.curvature import hessian, sharpness_measures
from losslandscape.data import batch_sources, datasets
from losslandscape.errors import UsageError
from losslandscape.objectives import objective as objectives

CPU_BATCH_SIZES = (32, 64, 128, 256)      # small batches keep a CPU's activations in its caches
GPU_BATCH_SIZES = (128, 256, 512, 1024)
VALUE_RTOL = 1e-5         # a candidate may change the probe loss by this much (relative), no more
AMP_VALUE_RTOL = 1e-2     # with --amp every candidate rounds in bfloat16 (about 1e-3 relative)
ROUNDS = 2                # interleaved passes over the probe samples per compared configuration (after a warm-up
CONTENDER = 1.15          # pass); the second only within this factor of the fastest first pass; the fastest counts
AMP_HINT_SPEEDUP = 1.2    # the line mentions --amp when it is at least this much faster than the choice
MIN_PASS_SECONDS = 0.05   # a timed pass shorter than this is repeated until it lasts this long: a small
                          # model's whole search once took 22 ms, and its choices varied from run to run
MIN_RUN_SECONDS = 10.0    # auto times only runs estimated to take at least this long (at the plain speed) ...
SEARCH_SHARE = 0.2        # ... and whose timing costs at most this share of it: it typically finds 1.3-1.5x on a
                          # CPU (benchmarks/RESULTS.md), and is a few seconds for any realistic grid


# ----------------------------------------------------------------------------- timing

class Probe:
    """The first training samples, batched as each candidate batches them: for the built-in data
    sets (batch_sources.CachedBatches) in any batch size, normalised per batch as a run does; for
    other sources their own first batches (their batch size is fixed when they are made)."""

    def __init__(self, source, size, device):
        self.cached = None
        if isinstance(source, batch_sources.CachedBatches):
            data = source.data
            n = min(len(data), size)
            self.cached = datasets.CachedDataset(data.inputs[:n], data.targets[:n], data.num_classes,
                                                   data.scale, data.shift).to(device)
            self.num_samples = n
            self.first = next(self.cached.batches(n))[0]
            return
        self.fixed, self.num_samples = [], 0
        for batch in source.batches():
            self.fixed.append(batch)
            self.num_samples += objectives.first_tensor(batch).shape[0]
            if self.num_samples >= size:
                break
        self.first = objectives.first_tensor(self.fixed[0])

    def num_batches(self, config):
        """How many batches ``batches(config)`` yields."""
        return math.ceil(self.num_samples / config.batch_size) if self.cached is not None else len(self.fixed)

    def batches(self, config):
        if self.cached is not None:
            data = self.cached.channels_last() if config.channels_last else self.cached
            return data.batches(config.batch_size)
        if config.channels_last:
            return (batch_sources.map_tensors(batch, batch_sources.to_channels_last) for batch in self.fixed)
        return iter(self.fixed)


class Search:
    """The timed search of part 5 (module docstring) over the parts not given."""

    def __init__(self, settings, net, the_objective, train_data, device, given):
        self.net, self.objective, self.device, self.amp = net, the_objective, torch.device(device), settings.amp
        self.given, self.settings = given, settings
        sizes = GPU_BATCH_SIZES if self.device.type == 'cuda' else CPU_BATCH_SIZES
        # A batch size never exceeds the data: min(b, n) batches n samples as any b >= n does.
        self.batch_sizes = sorted({min(b, train_data.num_samples) for b in sizes})
        self.probe = Probe(train_data, max(self.batch_sizes), device)
        self.foldings = {}   # layout -> BatchNormFolding of net in that layout (None: cannot fold)
        self.warmed_up = set()
        self.free = self._free_parts(train_data)

    def _free_parts(self, train_data):
        """The parts to time: not given, and able to change anything for this model and data."""
        free = []
        if self.settings.points_per_call > 1:
            return free   # stacked points run under vmap: not what a probe pass times
        convolutional = any(isinstance(m, nn.Conv2d) for m in self.net.modules())
        if 'channels_last' not in self.given and convolutional and self.probe.first is not None \
                and self.probe.first.dim() == 4:
            free.append('channels_last')
        if 'fold_bn' not in self.given and convolutional:
            free.append('fold_bn')
        # Recomputed BatchNorm statistics depend on the batches, beyond rounding: not for timing.
        if 'batch_size' not in self.given and isinstance(train_data, batch_sources.CachedBatches) \
                and self.probe.cached is not None and not self.settings.recomputes_statistics \
                and self.settings.ngpu == 1 and len(self.batch_sizes) > 1:
            free.append('batch_size')
        return free

    def untimed(self):
        """Why nothing is timed (the compute line's words), saying why the batch size is what it is."""
        if 'batch_size' in self.given:
            return 'the batch size is given; nothing else to choose for this model, data and flags'
        return 'the default: ' + untimed_batch_reason(
            self.probe.cached is not None, len(self.batch_sizes), points_per_call=self.settings.points_per_call,
            statistics=self.settings.recomputes_statistics, ngpu=self.settings.ngpu)

    def cache_key(self):
        """The timing cache's key for this search (None when there is nothing to time)."""
        return _cache_key(configuration.SURFACE, self, amp=self.amp, free=self.free) if self.free else None

    def model(self, config):
        """The model that evaluates ``config`` (net itself, or its folded view); None when the
        model cannot be folded (torch.fx cannot trace it, or nothing folds or fuses)."""
        layout = torch.channels_last if config.channels_last else torch.contiguous_format
        self.net.to(self.device).to(memory_format=layout)
        if not config.fold_bn:
            return self.net
        if config.channels_last not in self.foldings:
            try:
                folding = bn_folding.BatchNormFolding(self.net)
            except UsageError:
                folding = None
            if folding is not None and not (folding.num_folded or folding.num_fused):
                folding = None
            if folding is not None:
                folding.module.to(self.device)
            self.foldings[config.channels_last] = folding
        folding = self.foldings[config.channels_last]
        return None if folding is None else folding.module

    def measure(self, config):
        """(seconds per probe sample, probe loss) of one pass of ``config`` over the probe samples;
        None when ``config`` does not apply. The first call of a model (layout, folding, dtype) at
        a batch size creates the kernels of that shape and maps the memory its later batches reuse
        (keep_freed_memory), so the clock then starts after the first batch, which still counts
        towards the loss; a pass of a single batch is warmed up on it first. A pass shorter than
        MIN_PASS_SECONDS is repeated (its loss taken from the first) until the clock has that long."""
        model = self.model(config)
        if model is None:
            return None
        model.eval()
        # Per shape: a warmed model's first batch of another size cost 30-60 % more than its next
        # (resnet20, batch 64, fp32 and bf16, one fresh process per shape on a 2-core EPYC), which
        # in a pass of 4 batches put a truly faster batch size out of the second round. Warming up
        # on a whole pass would only cost more.
        warm_key = (config.channels_last, config.fold_bn, self.amp, config.batch_size)
        cold, batches = warm_key not in self.warmed_up, self.probe.num_batches(config)
        untimed = 1 if cold and batches > 1 else 0   # batches whose samples the clock leaves out
        untimed_samples = 0
        with torch.inference_mode():
            if cold and batches == 1:
                self.objective.sums(model, next(iter(self.probe.batches(config))), self.amp)
            totals, start = {}, time.perf_counter()
            for index, batch in enumerate(self.probe.batches(config)):
                sums = self.objective.sums(model, batch, self.amp)
                if index < untimed:
                    if self.device.type == 'cuda':
                        torch.cuda.synchronize(self.device)
                    untimed_samples += objectives.first_tensor(batch).shape[0]
                    start = time.perf_counter()
                for key, value in sums.items():
                    totals[key] = totals[key] + value if key in totals else value
            values = {k: v.item() if torch.is_tensor(v) else float(v) for k, v in totals.items()}   # syncs
            seconds, timed_samples = time.perf_counter() - start, self.probe.num_samples - untimed_samples
            while seconds < MIN_PASS_SECONDS:   # too short for the clock and the machine's jitter
                start = time.perf_counter()
                for batch in self.probe.batches(config):
                    self.objective.sums(model, batch, self.amp)
                if self.device.type == 'cuda':
                    torch.cuda.synchronize(self.device)
                seconds, timed_samples = seconds + time.perf_counter() - start, timed_samples + self.probe.num_samples
        self.warmed_up.add(warm_key)
        return seconds / timed_samples, values[objectives.LOSS] / values[objectives.COUNT]

    def try_measure(self, config):
        """measure(config), or None when it fails to run."""
        try:
            return self.measure(config)
        except (RuntimeError, TypeError):   # e.g. a folded model whose code depends on input values
            return None

    def compare(self, configs, first_round=None):
        """{config: (fastest seconds per sample, probe loss)} of ``configs`` timed in interleaved
        rounds, so that a drift of the machine's speed hits each alike: ROUNDS passes each, but only
        one for those whose first pass is slower than CONTENDER times the fastest first pass (and
        for the fastest too when no other is that close).
        ``first_round``: {config: measure(config)} just taken, standing for its first-round pass.
        Configurations that do not apply, or fail to run, are left out."""
        results = dict(first_round or {})
        for round_ in range(ROUNDS):
            fastest = min((seconds for seconds, _ in results.values()), default=math.inf)
            if round_:
                contenders = [c for c in configs if c in results and results[c][0] <= CONTENDER * fastest]
                if len(contenders) < 2:
                    break   # the fastest alone: another pass of it could not change the choice
            for config in configs:
                if round_ and config not in contenders:
                    continue
                if not round_ and config in results:
                    continue
                measured = self.try_measure(config)
                if measured is not None:
                    seconds, loss = measured
                    results[config] = (min(seconds, results[config][0]) if config in results else seconds, loss)
        return results

    def run(self, always, samples_per_point, points_per_rank):
        """(configuration, how, why) for the free parts, timed (or PLAIN when not worth it)."""
        start = time.perf_counter()
        reference = configuration.with_parts(configuration.PLAIN, self.given)
        try:
            return self._run(always, samples_per_point, points_per_rank, reference, start)
        finally:
            self.net.to(memory_format=torch.contiguous_format).eval()   # prepare_evaluation lays it out

    def _run(self, always, samples_per_point, points_per_rank, reference, start):
        if not self.free:
            return reference, 'plain', self.untimed()
        base_time, base_loss = self.measure(reference)
        run_seconds = base_time * samples_per_point * points_per_rank
        steps = [name for name in ('fold_bn', 'channels_last', 'batch_size') if name in self.free]
        # As the line will count them: folding is checked by one pass, not timed against the rest.
        configs = 1 + sum(len(self.batch_sizes) - 1 if name == 'batch_size' else 1 for name in steps
                          if name != 'fold_bn')
        # At most: a warm-up and a pass per model (layout x folding), and each timed step's rounds.
        models = 1 + ('fold_bn' in steps) + ('channels_last' in steps)
        passes = 2 * models + ROUNDS * sum(len(self.batch_sizes) if name == 'batch_size' else 2
                                           for name in steps if name != 'fold_bn')
        too_short = _too_short(always, run_seconds, passes * max(base_time * self.probe.num_samples, MIN_PASS_SECONDS),
                               f'{configs} configurations')
        if too_short:
            return reference, 'plain', too_short
        rtol = AMP_VALUE_RTOL if self.amp else VALUE_RTOL
        best, fastest, discarded = reference, {}, []   # fastest: over the interleaved passes only
        just_measured = {}   # the best so far's passes, its first round of the step after them
        for name in steps:
            if name == 'fold_bn':
                # By rule, not by timing: folding drops a pass over each folded convolution's output
                # (and fusing, on the CPU, more), so it is taken wherever the model folds and the
                # probe loss holds. One pass checks that; timing it against the unfolded model would
                # only let the machine's noise choose (it did, once, under --amp: RESULTS.md).
                folded = dataclasses.replace(best, fold_bn=True)
                measured = self.try_measure(folded)
                if measured is None:
                    continue
                if abs(measured[1] - base_loss) <= rtol * abs(base_loss):
                    best, just_measured = folded, {folded: measured}
                else:
                    discarded.append(folded.describe())
                continue
            options = [True] if name != 'batch_size' else [b for b in self.batch_sizes if b != best.batch_size]
            candidates = [best] + [dataclasses.replace(best, **{name: value}) for value in options]
            results = self.compare(candidates, just_measured)
            kept = {}
            for config, (seconds, loss) in results.items():
                fastest[config] = min(seconds, fastest.get(config, math.inf))
                if config == best or abs(loss - base_loss) <= rtol * abs(base_loss):
                    kept[config] = seconds
                else:
                    discarded.append(config.describe())
            best = min(kept, key=kept.get) if kept else best
            # The best's passes stand for its first round of the next step (timed just before it).
            just_measured = {best: (fastest[best], results[best][1])} if best in results else {}
        took = time.perf_counter() - start
        why = (f'{fastest.get(reference, base_time) / fastest.get(best, base_time):.2f}x the plain configuration\'s '
               f'speed on {self.probe.num_samples} probe samples; {len(fastest) or 1} configurations timed in '
               f'{took:.2g} s')
        if discarded:
            why += f'; discarded for changing the loss by more than {rtol:g}: {"; ".join(discarded)}'
        return best, 'search', why + self.amp_hint(best, fastest.get(best, base_time))

    def amp_hint(self, best, seconds):
        """'; --amp ... faster here' when bfloat16 autocast of ``best`` pays on this device (native
        bf16, AMP_HINT_SPEEDUP or more), else ''. --amp itself is never chosen: it changes values."""
        if self.amp or not runtime.native_bf16(self.device):
            return ''
        self.amp = True
        try:
            timed = self.try_measure(best)   # one pass: a hint, not a choice
        finally:
            self.amp = False
        if timed is None or seconds / timed[0] < AMP_HINT_SPEEDUP:
            return ''
        speedup = seconds / timed[0]
        return f'; --amp (bfloat16: the loss moves by about 1e-3 relative) would be {speedup:.1f}x faster here'


HESSIAN_CPU_BATCH_SIZES = (64, 128, 256, 512, 1024)    # double back-propagation often wants larger
HESSIAN_GPU_BATCH_SIZES = (256, 512, 1024, 2048)       # batches than a forward pass (RESULTS.md)
PRODUCTS_PER_POINT = 42   # two Lanczos solves of ncv + 1 = 21 products at plot_hessian_eigen.py's defaults
PRODUCT_RTOL = 1e-4       # a candidate's probe product may differ from the plain batch's by this (relative norm)


def _cache_key(kind, search, **more):
    """timing_cache's key for ``search`` (a Search or HessianSearch): what every timing depends on
    (device, model, probe, candidates, loss, given parts), and ``more``."""
    first = search.probe.first
    return timing_cache.make_key(
        kind=kind, device=timing_cache.device_identity(search.device), model=timing_cache.model_identity(search.net),
        input=None if first is None else [list(first.shape[1:]), str(first.dtype)],
        probe_samples=search.probe.num_samples, batch_sizes=search.batch_sizes, objective=search.objective.name,
        given=search.given, **more)


def untimed_batch_reason(resident, candidates, points_per_call=1, statistics=False, ngpu=1):
    """Why a run's batch size is not timed (and so is the default): the first that holds."""
    if points_per_call > 1:
        return 'stacked points (--points_per_call) are not timed'
    if not resident:
        return 'only the batch size of a data set held in memory (a built-in one) is timed'
    if statistics:
        return 'recomputed BatchNorm statistics depend on the batches'
    if ngpu > 1:
        return 'the batch size is not timed across several GPUs'
    if candidates <= 1:
        return 'the data set is no larger than the smallest batch'
    return 'nothing to time'


def _too_short(always, run_seconds, search_seconds, what):
    """Why a run is not timed under auto ('' when it is: ``always``, or long enough to pay for
    timing ``what``): estimated under MIN_RUN_SECONDS, or the timing over SEARCH_SHARE of it."""
    if always or (run_seconds >= MIN_RUN_SECONDS and search_seconds <= SEARCH_SHARE * run_seconds):
        return ''
    return (f'the run, about {run_seconds:.2g} s, is too short to pay for timing {what}; '
            '--compute_config search times them')


class HessianSearch:
    """Part 5 for the Hessian scripts: the batch size alone, timed by Hessian-vector products
    (hessian.MeanLossHessian, gradient graphs kept as in a run) over the probe samples, for runs
    of ``units`` of ``products`` products each at the same weights (plot_hessian_eigen.py: points
    of PRODUCTS_PER_POINT; hessian_spectrum.py: its one point). A unit's cost is modelled as its
    first product (which builds the gradient graphs) plus the others through them, each measured;
    candidates are timed in ROUNDS interleaved passes, the fastest counting. ``free``: whether the
    batch size is the run's to choose (not given, not recorded: the caller knows)."""

    KIND, WORK = configuration.HESSIAN, 'products'   # its timing cache kind; what its line calls the work timed
    CPU_SIZES, GPU_SIZES = HESSIAN_CPU_BATCH_SIZES, HESSIAN_GPU_BATCH_SIZES

    def __init__(self, net, the_objective, train_data, device, params, given=None, products=PRODUCTS_PER_POINT,
                 free=True):
        self.net, self.objective, self.device, self.params = net, the_objective, torch.device(device), params
        self.given, self.products = given or {}, products
        sizes = self.GPU_SIZES if self.device.type == 'cuda' else self.CPU_SIZES
        n = train_data.num_samples
        self.batch_sizes = sorted({min(b, n) for b in (*sizes, configuration.PLAIN.batch_size)})
        self.free = free and 'batch_size' not in self.given and isinstance(train_data, batch_sources.CachedBatches) \
            and len(self.batch_sizes) > 1
        self.probe = Probe(train_data, max(self.batch_sizes), device) if self.free else None
        self.vector = None
        self.train_samples, self.train_data = n, train_data

    def cache_key(self):
        """The timing cache's key for this search (None when the batch size is not free)."""
        if not self.free:
            return None
        return _cache_key(self.KIND, self, products=self.products, params=[tuple(p.shape) for p in self.params],
                          train_samples=self.train_samples)

    def measure(self, batch_size):
        """(seconds per probe sample of one unit's products, the first product) at ``batch_size``."""
        operator = hessian.MeanLossHessian(self.net, self.probe.cached, self.objective, batch_size=batch_size,
                                           params=self.params)
        if self.vector is None:
            self.vector = np.random.default_rng(0).standard_normal(operator.size)
            operator.hvp(self.vector)          # warm-up: the first products create kernels and map memory
            operator.invalidate()
        start = time.perf_counter()
        first = operator.hvp(self.vector)
        built = time.perf_counter()
        operator.hvp(self.vector)
        seconds = (built - start) + (self.products - 1) * (time.perf_counter() - built)
        return seconds / self.probe.num_samples, first

    def run(self, always, units):
        """(configuration, how, why): the batch size timed, or PLAIN's when not worth it."""
        reference = configuration.with_parts(configuration.PLAIN, self.given)
        if not self.free:
            return reference, 'plain', 'as given' if 'batch_size' in self.given else 'the default: ' + \
                untimed_batch_reason(isinstance(self.train_data, batch_sources.CachedBatches), len(self.batch_sizes))
        start = time.perf_counter()
        plain_size = min(configuration.PLAIN.batch_size, self.train_samples)
        base_time, base_product = self.measure(plain_size)   # the first measurement warms up too
        # What the timing costs is what its measurements take (two products, or one gradient, each),
        # not the whole units they model: a 13 s eigenvalue map, estimated so, was left untimed
        # although its timing then took 1 s and found 1.5x. So one measurement is timed as it is.
        again = time.perf_counter()
        base_time = min(base_time, self.measure(plain_size)[0])
        search_seconds = (time.perf_counter() - again) * ROUNDS * len(self.batch_sizes)
        run_seconds = base_time * self.train_samples * units
        too_short = _too_short(always, run_seconds, search_seconds, f'{len(self.batch_sizes)} batch sizes')
        if too_short:
            return reference, 'plain', too_short
        fastest, discarded = {plain_size: base_time}, []
        for _ in range(ROUNDS):
            for size in self.batch_sizes:
                seconds, product = self.measure(size)
                if np.linalg.norm(product - base_product) > PRODUCT_RTOL * np.linalg.norm(base_product):
                    discarded.append(size)
                    continue
                fastest[size] = min(seconds, fastest.get(size, math.inf))
        chosen = min((size for size in fastest if size not in discarded), key=fastest.get)
        why = (f'{fastest[plain_size] / fastest[chosen]:.2f}x the {self.WORK} of batch {plain_size} on '
               f'{self.probe.num_samples} probe samples; {len(self.batch_sizes)} batch sizes timed in '
               f'{time.perf_counter() - start:.2g} s')
        if discarded:
            why += f'; discarded for changing the {self.WORK} by more than {PRODUCT_RTOL:g}: ' + \
                ', '.join(f'batch {size}' for size in sorted(set(discarded)))
        return dataclasses.replace(reference, batch_size=chosen), 'search', why


class GradientSearch(HessianSearch):
    """HessianSearch for sharpness.py, whose work is gradients of the mean loss over the data
    (sharpness_measures.PerturbedLoss: a gradient-ascent step each): the batch size timed by
    whole gradients over the probe samples, for one unit of ``products`` gradients. A gradient is a
    single back-propagation, so the batch size that suits it need not suit a Hessian-vector product:
    the candidates are the forward pass's (a CPU keeps small batches' activations in its caches),
    which also keeps the probe, and so the timing, a quarter of the Hessian's."""
    KIND, WORK = configuration.GRADIENT, 'gradients'
    CPU_SIZES, GPU_SIZES = CPU_BATCH_SIZES, GPU_BATCH_SIZES
    probe_count = None   # the probe samples' total count, taken by the first measurement's pass

    def measure(self, batch_size):
        """(seconds per probe sample of one unit's gradients, the gradient) at ``batch_size``."""
        loss = sharpness_measures.PerturbedLoss(
            self.net, batch_sources.CachedBatches(self.probe.cached, batch_size, self.device), self.objective, self.params,
            count=self.probe_count)
        centre = np.zeros(loss.size)
        if self.probe_count is None:
            self.probe_count = loss.count
            loss.value_and_gradient(centre)    # warm-up: the first pass creates kernels and maps memory
        start = time.perf_counter()
        _, gradient = loss.value_and_gradient(centre)
        seconds = self.products * (time.perf_counter() - start)
        loss.restore()
        return seconds / self.probe.num_samples, gradient
