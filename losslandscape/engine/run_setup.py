"""Building a run: everything a grid evaluation needs on one rank, made by named steps in order.

    settings = RunSettings.from_args(args)          # the flags, typed; nothing else reads args
    run = prepare_run(settings, comm)               # the steps below, in this order:
        plan_files          grid, direction and surface file names, their folders checked
        build_model         the centre model (and a loader for --model_file2/3)
        load_data           training (and test) batch sources, resident or streamed
        probe_objective     the objective on one batch: bad results are refused here
        settle_samples      --target_stderr: the training samples every point is evaluated on, chosen at the centre
        check_surface       rank 0 refuses an existing surface file made for another run or configuration
        choose_compute      layout, batch size, BatchNorm folding: given, recorded, or timed (choosing.py)
        prepare_evaluation  the model on its device, BatchNorm folded, compiled, wrapped (and probed again)
        write_directions    rank 0 makes the direction file (tensor by tensor, or in seed form)
        open_directions     the directions where --dir_mode keeps them: held on the device, read from
                            the file, or regenerated, at each point (none along a curve, --curve_file)
    surface_engine.run_grid(comm, run.grid, run.open_writer(names), evaluate_points)

Every step that can refuse the input runs before the first file is written, so a bad flag, file,
model, data set or loss function leaves the folder as it was. Used by plot_surface.py,
plot_hessian_eigen.py and api.py.
"""
import dataclasses
import hashlib
import json
import os
import platform
import re
import sys

import h5py
import numpy as np
import torch

from losslandscape._memory import release_freed_memory
from losslandscape.cli.parsing import check_output_folder
from losslandscape.compute import bn_folding, choosing, configuration, runtime
from losslandscape.curvature import hessian
from losslandscape.curves import bn_statistics, connecting_curves
from losslandscape.data import batch_sources, user_code
from losslandscape.directions import direction_files, moving, sources, subsets
from losslandscape.engine import sample_budget
from losslandscape.engine.grid import Grid, parse_axis
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout, surface_store
from losslandscape.models import loading
from losslandscape.objectives import objective
from losslandscape.parallel.mpi_comm import select_device


def describe(value):
    """How a setting given as a Python object (api.py) is recorded in the files."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if callable(value) and not isinstance(value, torch.nn.Module):
        return objective.describe_callable(value)
    described = f'python:{type(value).__module__}.{type(value).__qualname__}'
    if isinstance(value, torch.nn.Module):
        described += f' {hdf5_layout.ARCHITECTURE_TAG}{architecture_hash(value)}'
    return described


def architecture_hash(model):
    """A hash of ``model``'s state_dict layout -- names, shapes, dtypes -- that a model given from
    Python is recorded by besides its class: a class defined in a notebook (__main__) and the
    same class moved into a module later are the same model."""
    layout = [(name, tuple(t.shape), str(t.dtype)) for name, t in model.state_dict().items()]
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ModelDataSettings:
    """The flags every script that evaluates one model shares, typed: the centre model and its
    objective, its data, the device (grid_args.py: add_centre_arguments, add_data_arguments,
    add_device_arguments). ``dataset`` and ``loss_name`` may also be Python objects (api.py)."""
    model: str
    model_file: str
    loss_name: object
    dataset: object
    datapath: str
    download: bool
    raw_data: bool
    data_split: int
    split_idx: int
    batch_size: int       # None: chosen (choosing.py); PLAIN's until then
    train_labels: str
    data_mode: str
    workers: int
    cuda: bool
    threads: int
    rand_seed: int        # the initial weights' seed without --model_file (None: a model given from Python)

    @classmethod
    def from_args(cls, args):
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @property
    def init_seed(self):
        """The seed the centre's weights were initialised under, when no checkpoint gives them."""
        return None if self.model_file else self.rand_seed

    def model_flag(self):
        """How messages name the model: its --model, or the Hugging Face folder that built it."""
        return f'--model {self.model!r}' if self.model is not None else f'--model_file {self.model_file!r}'

    def untrained_name_root(self):
        """What default file names start from without --model_file: the model, then the seed (in
        the working folder)."""
        model = re.sub(r'[^\w.=-]+', '_', str(user_code.canonical_spec(self.model))).strip('_')
        return f'{model}_init_seed={self.rand_seed}'

    def batch_source(self, train, device, comm, dataset=None, samples=None, sample_seed=0):
        """The training (``train``) or test batch source of these flags; ``dataset``: a data set
        given from Python instead of --dataset; ``samples``: a seeded subset of the split
        (batch_sources.batch_source)."""
        return self.open_split(train, dataset).source(
            self.batch_size or configuration.PLAIN.batch_size, device, self.data_mode, self.workers,
            share=comm.local_size, samples=samples, sample_seed=sample_seed)

    def open_split(self, train, dataset=None):
        """The training or test split of these flags, read (batch_sources.OpenSplit)."""
        return batch_sources.open_split(
            dataset if dataset is not None else self.dataset, self.datapath, train, raw_data=self.raw_data,
            data_split=self.data_split, split_idx=self.split_idx, download=self.download,
            labels_file=self.train_labels if train else None)


@dataclasses.dataclass(frozen=True)
class RunSettings(ModelDataSettings):
    """What a grid run is asked to do: the grid scripts' flags, typed (see grid_args.py for each
    flag's meaning). channels_last None and fold_bn None, like batch_size None: chosen."""
    x: str
    y: str
    directions: direction_files.DirectionSpec
    eval_test: bool
    surf_file: str
    ngpu: int
    channels_last: bool
    fold_bn: bool
    compute_config: str   # configuration.MODES
    compile: bool
    amp: bool
    points_per_call: int
    curve_file: str       # evaluate along this trained curve (x = t) instead of directions
    dir_mode: str         # where the directions live while the run moves the model (directions.sources)
    recompute_bn: bool
    device_map: str       # 'auto': the model spread over the devices by accelerate, moved where it lies
    samples: int          # every point on this many samples of the split, a seeded subset (None: all)
    sample_seed: int
    target_stderr: float  # samples chosen at the centre for this relative standard error of the loss
    recorded_args: dict   # every flag as the surface file's 'args' attribute records it

    @classmethod
    def from_args(cls, args):
        names = {f.name for f in dataclasses.fields(cls)} - {'directions', 'recorded_args'}
        settings = cls(directions=direction_files.DirectionSpec.from_args(args),
                       recorded_args={k: describe(v) for k, v in vars(args).items()},
                       **{name: getattr(args, name) for name in names})
        if settings.init_seed is not None and not settings.directions.name_root and not settings.curve_file:
            settings = dataclasses.replace(settings, directions=dataclasses.replace(
                settings.directions, name_root=settings.untrained_name_root()))
        return settings

    @property
    def dir_type(self):
        return self.directions.dir_type

    @property
    def recomputes_statistics(self):
        """Whether every point gets BatchNorm statistics of its own (always along a curve)."""
        return self.recompute_bn or bool(self.curve_file)


# The identity fields that are paths: recorded absolute, so a run from another folder still matches.
PATH_FIELDS = ('model_file', 'model_file2', 'model_file3', 'train_labels')
FACTORY_FIELDS = ('model', 'dataset', 'loss_name')   # may name package.module:factory(...) specs


def run_identity(settings, dir_file, is_2d, kind=configuration.SURFACE):
    """The identity fields of a run (hdf5_layout.IDENTITY_FIELDS), paths made absolute, and the
    content id of the directions it uses (once its direction file exists)."""
    # Recorded always: values with recomputed BatchNorm statistics are never mixed with others.
    identity = {'recompute_bn': settings.recomputes_statistics}
    if settings.init_seed is not None:   # no checkpoint: the weights are the seed's
        identity['init_seed'] = settings.init_seed
    if kind == configuration.SURFACE:
        # Nor bf16 values with float32 ones (the loss moves by about 1e-3). The Hessian, always in
        # float32, may be added to a file whose loss values were computed under --amp.
        identity['amp'] = settings.amp
    if settings.curve_file:
        identity[hdf5_layout.DIRECTION_ID] = hdf5_layout.curve_content_id(settings.curve_file)
    elif os.path.exists(dir_file):
        identity[hdf5_layout.DIRECTION_ID] = hdf5_layout.direction_content_id(dir_file, with_y=is_2d)
    for key in hdf5_layout.IDENTITY_FIELDS:
        if key == hdf5_layout.DIRECTION_ID:
            continue
        source = settings.directions if hasattr(settings.directions, key) and not hasattr(settings, key) \
            else settings
        value = describe(getattr(source, key))
        if key in FACTORY_FIELDS:   # the same factory and arguments, however they were written
            value = user_code.canonical_spec(value)
        if key in PATH_FIELDS and value:
            value = os.path.realpath(value)
        identity[key] = value
    if settings.samples is None:   # the seed draws nothing then
        identity[hdf5_layout.SAMPLE_SEED] = None
    return identity


def library_versions(comm):
    versions = {'python': platform.python_version(), 'torch': torch.__version__, 'numpy': np.__version__,
                'h5py': h5py.__version__, 'mpi_ranks': comm.size}
    mpi = sys.modules.get('mpi4py')
    if mpi is not None:
        versions['mpi4py'] = mpi.__version__
    return versions


@dataclasses.dataclass
class Run:
    """Everything a grid evaluation needs on one rank, built by ``prepare_run``."""
    settings: RunSettings
    comm: object
    device: torch.device
    grid: Grid
    dir_file: str
    surf_file: str
    net: torch.nn.Module          # what the grid moves
    eval_net: torch.nn.Module     # what evaluates it: the same model, folded, compiled or wrapped
    folding: object               # bn_folding.BatchNormFolding, or None
    objective: objective.Objective
    value_keys: list              # the objective's values for one data set ('loss', 'acc', ...)
    train_data: object            # batch sources (data.batch_sources)
    test_data: object
    base: list                    # the centre's tensors on the device: kept once, in the model's dtypes
    directions: object            # a directions.sources source (None along a curve)
    curve: connecting_curves.Curve = None    # --curve_file: x is the curve's t
    centre_buffers: list = None   # the centre's buffers, when every point recomputes its statistics
    compute: configuration.Choice = None   # the configuration settings holds, its line and its record
    kind: str = configuration.SURFACE      # configuration.HESSIAN: a run of Hessians, not of the objective
    stderr_methods: dict = None   # {value key: how its standard error is estimated} (standard_errors.METHODS)

    def move_to(self, k):
        """Put the model at grid point ``k``; return its (x, y) coordinates."""
        x, y = self.grid.point(k)
        self.place(x, y)
        return x, y

    def move_to_centre(self):
        """Put the model at the centre as a grid point there is placed (x = y = 0: BatchNorm
        statistics recomputed where every point's are), whether the grid holds it or not."""
        self.place(0.0, None if not self.grid.is_2d else 0.0)

    def place(self, x, y):
        """Put the model at (x, y) (y None on a 1D grid)."""
        if self.curve is not None:
            self.curve.place(self.net, x)
        else:
            moving.move(self.net, self.settings.dir_type, self.base, self.directions, x=x, y=0.0 if y is None else y)
        if self.settings.recomputes_statistics:
            bn_statistics.recompute(self.net, self.train_data, self.objective)
        if self.folding is not None:
            self.folding.refresh()

    def restore_centre(self):
        """Put the model back at the centre (x = y = 0), as it came (api.py hands it back)."""
        if self.curve is not None:
            self.curve.place(self.net, 0.0)
        else:
            moving.move(self.net, self.settings.dir_type, self.base, self.directions, x=0.0, y=0.0)
        if self.centre_buffers is not None:
            with torch.no_grad():
                for buffer, saved in zip(self.net.buffers(), self.centre_buffers):
                    buffer.copy_(saved)
        if self.folding is not None:
            self.folding.refresh()

    def report(self, summary):
        """The run's one line on stdout (rank 0): points computed, time, diverged values."""
        counts = ', '.join(f'{n}: {c}' for n, c in summary['diverged'].items())
        state = 'complete' if summary['complete'] else 'incomplete'
        # With 'states' directions a point can also be NaN without any divergence: extrapolating past a
        # model (x > 1 between two models, say) can drive BatchNorm running variances negative.
        why = 'diverged, or a BatchNorm running variance went negative' if self.settings.dir_type == 'states' \
            else 'diverged'
        seconds = summary['seconds']
        took = f'{seconds:.2f}' if seconds >= 1 else f'{seconds:.3g}'   # short runs keep 3 digits
        print(f'{self.surf_file}: {summary["computed"]} points computed in {took} s, '
              f'surface {state}' + (f'; inf/NaN points ({why}): {counts}' if counts else ''), flush=True)

    def datasets(self):
        """[(prefix, batch source)]: 'train', and 'test' with --eval_test."""
        return [(prefix, data) for prefix, data in (('train', self.train_data), ('test', self.test_data))
                if data is not None]

    def value_names(self):
        """The surface's value names: train_loss, train_acc, ... (test_... with --eval_test)."""
        return [f'{prefix}_{key}' for prefix, _ in self.datasets() for key in self.value_keys]

    def by_product_names(self):
        """The standard errors and rises stored beside the values (train_loss_stderr, ...,
        train_loss_rise, train_loss_rise_stderr): by-products, which never make a point pending."""
        return [f'{prefix}_{key}' for prefix, _ in self.datasets()
                for key in self.objective.by_product_keys(self.value_keys)]

    def recorded_stderr_methods(self):
        """{stderr name: how it is estimated}, as the surface file records it."""
        return {hdf5_layout.stderr_name(f'{prefix}_{key}'): method for prefix, _ in self.datasets()
                for key, method in self.stderr_methods.items()}

    def open_writer(self, value_names, by_products=()):
        """A factory of the surface file's writer (called on rank 0 by run_grid)."""
        attrs = {hdf5_layout.ARGS_ATTR: self.settings.recorded_args,
                 hdf5_layout.VERSIONS_ATTR: library_versions(self.comm)}
        if self.compute is not None:
            attrs[hdf5_layout.COMPUTE_ATTR] = self.compute.record
        if self.stderr_methods and self.kind == configuration.SURFACE:
            attrs[hdf5_layout.STDERR_METHODS_ATTR] = self.recorded_stderr_methods()
        identity = run_identity(self.settings, self.dir_file, self.grid.is_2d, self.kind)
        return lambda: surface_store.SurfaceWriter(self.surf_file, self.grid, self.dir_file, value_names,
                                                   identity, attrs, by_products)


# ----------------------------------------------------------------------------- the steps

def plan_files(settings, comm):
    """The grid and the direction and surface file names; the folders that will hold new files
    checked (default names lie beside --model_file, whose folder may be read-only)."""
    grid = Grid(parse_axis(settings.x, '--x'), parse_axis(settings.y, '--y') if settings.y else None)
    # Along a curve the curve file takes the direction file's place (names, records, identity).
    dir_file = settings.curve_file or direction_files.name_direction_file(settings.directions)
    surf_file = settings.surf_file or direction_files.name_surface_file(
        dir_file, grid, settings.raw_data, settings.data_split, settings.split_idx)

    def check_output_folders():
        if not os.path.exists(dir_file):
            check_output_folder(dir_file, 'direction file', 'pass --dir_file to use one from elsewhere')
        if not settings.surf_file:
            check_output_folder(surf_file, 'surface file', 'pass --surf_file to write it elsewhere')
    comm.root_only(check_output_folders)
    return grid, dir_file, surf_file


def build_model(settings, net=None):
    """(the centre model in eval mode, load_model(path, flag) for the other checkpoints). ``net``:
    a model given from Python, whose current weights are the centre (and whose class is rebuilt
    for --model_file2/3 by deep copy, when asked: directions towards checkpoints whose names are
    the model's are read tensor by tensor and need no copy)."""
    if net is not None:
        import copy

        def load_model(path, flag):
            other = copy.deepcopy(net).cpu()   # before any point: net is at the centre
            return loading.load_checkpoint(other, path, flag).eval()
        return net.eval(), connecting_curves.loader_taking_bends(load_model, net)

    def load_model(path, flag='--model_file'):
        return loading.load(settings.dataset, settings.model, path, flag, init_seed=settings.rand_seed,
                            architecture_folder=settings.model_file)
    net = loading.load(settings.dataset, settings.model, settings.model_file, init_seed=settings.rand_seed,
                       device_map=getattr(settings, 'device_map', None))
    return net, connecting_curves.loader_taking_bends(load_model, net)


def load_data(settings, device, comm, train_dataset=None, test_dataset=None):
    """The training batch source (and the test one with --eval_test), before any file is made:
    a data error must leave the folder as it was. With --samples N (or the N --target_stderr
    chose), a seeded subset of N samples of each split (the test split's min(N, its size))."""
    sampled = dict(samples=settings.samples, sample_seed=settings.sample_seed)
    train = settings.batch_source(True, device, comm, train_dataset, **sampled)
    wanted_test = settings.eval_test and (test_dataset is not None or isinstance(settings.dataset, str))
    if settings.eval_test and not wanted_test:
        raise UsageError('eval_test needs a test_dataset')
    return train, settings.batch_source(False, device, comm, test_dataset, **sampled) if wanted_test else None


def choose_compute(settings, comm, kind, surf_file, grid, net, the_objective, train_data, test_data, device,
                   reload_data, threads=''):
    """(settings with the compute configuration's parts set, training and test batch sources in
    its batch size, the configuration.Choice): given, recorded in the surface file, or timed on
    rank 0 and broadcast (choosing.choose). ``reload_data(settings)``: the batch sources
    made again, for sources that cannot change their batch size in place. ``threads``: what the
    compute line says of the CPU threads (runtime.set_threads)."""
    choice = choosing.choose(settings, comm, kind, surf_file, net, the_objective, train_data, test_data,
                             device, grid.num_points, threads)
    settings = choice.config.apply(settings)
    sources = [data for data in (train_data, test_data) if data is not None]
    if all(isinstance(data, batch_sources.CachedBatches) for data in sources):
        for data in sources:
            data.batch_size = settings.batch_size   # batched as it is read: nothing to redo
    elif any(data.batch_size != settings.batch_size for data in sources):
        train_data, test_data = reload_data(settings)   # a batch size recorded or given for collated data
    return settings, train_data, test_data, choice


def prepare_evaluation(settings, net, comm, device, datasets, announce=True):
    """(eval_net, folding): ``net`` folded (--fold_bn), moved to ``device`` in its memory layout
    (--channels_last), wrapped (--ngpu) and compiled (--compile). Folded before any file is made:
    a model torch.fx cannot trace must leave the folder as it was. ``announce``: say how much was
    folded (when --fold_bn was given; a chosen folding is in the compute line)."""
    eval_net, folding = net, None
    if settings.fold_bn:
        folding = bn_folding.BatchNormFolding(net)
        eval_net = folding.module
        if comm.is_root and announce:
            print(f'--fold_bn: {folding.num_folded} BatchNorm layers folded into convolutions'
                  + ('' if folding.num_folded else ' (none follows a convolution directly)')
                  + (f', {folding.num_fused} convolutions fused with the ReLU after them' if folding.num_fused else ''),
                  file=sys.stderr, flush=True)
    # The folded convolutions live in folding.module only; every other layer is net's own.
    for model in [net] if folding is None else [net, folding.module]:
        if getattr(settings, 'device_map', None):
            continue   # spread over the devices: never gathered on one
        model.to(device)
        if settings.channels_last:
            model.to(memory_format=torch.channels_last)
    if settings.channels_last:
        for data in datasets:
            if data is not None:
                data.channels_last()
    if settings.cuda and settings.ngpu > 1:
        eval_net = torch.nn.DataParallel(eval_net, device_ids=list(range(min(settings.ngpu, torch.cuda.device_count()))))
    if settings.compile:
        # Parameters stay graph inputs (inductor's freezing is off by default), so moving the
        # weights in place between points needs no recompilation.
        eval_net = torch.compile(eval_net, dynamic=False)
    return eval_net, folding


CHECK_SAMPLES = 2   # the first check of the objective, on a built-in data set (probe_objective)


def probe_objective(the_objective, eval_net, data, amp=False, differentiable=False, samples=None):
    """(The objective's value keys, {value key: how its standard error is estimated}), from one
    batch at the centre: a loss function that returns the wrong thing (sums that cannot give a
    standard error too), or a batch the model cannot take, is refused here, before any file is made.
    ``differentiable``: also take the loss sum the Hessian differentiates and one Hessian-vector
    product of it (plot_hessian_eigen, hessian_spectrum, sharpness), so that a model whose
    products are impossible is refused here too.
    ``samples``: a batch of only this many samples where the source can batch so (the built-in
    data sets): a check needs no more, and a whole batch of a model that is timed or folded next
    would be a pass of work thrown away."""
    try:
        if samples is not None and isinstance(data, batch_sources.CachedBatches):
            first = data.first_batch(samples)
        else:
            first = next(iter(data.batches()))
    except (TypeError, RuntimeError) as err:
        raise UsageError(f'the data cannot be batched ({str(err).splitlines()[0]})') from None
    eval_net.eval()
    try:
        with torch.inference_mode():
            sums = the_objective.sums_and_units(eval_net, first, amp)[0]
        if differentiable:
            with torch.enable_grad():
                the_objective.loss_sum(eval_net, first)
    except (TypeError, RuntimeError) as err:
        # The model called with a batch it cannot take (a keyword it lacks, a shape mismatch).
        raise UsageError(f'--loss_name {the_objective.name}: the model cannot take a batch of this data '
                         f'({type(err).__name__}: {_first_line(err)})') from None
    if differentiable:
        try:
            hessian.probe_product(eval_net, the_objective, first)
        except RuntimeError as err:   # an operation without a second derivative, forward-mode ones included
            raise UsageError(f'--loss_name {the_objective.name}: Hessian-vector products cannot be taken through '
                             f'this model ({type(err).__name__}: {_first_line(err)})') from None
    the_objective.check_sums(sums)
    return the_objective.value_keys(sums), the_objective.stderr_methods(sums)


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else ''


def check_surface(settings, comm, kind, grid, dir_file, surf_file):
    """Rank 0: refuse an existing surface file made for another run, or computed in a
    configuration that flags given now would change (configuration.refuse_changed_parts)."""
    def check():
        if os.path.exists(surf_file):
            hdf5_layout.check_surface_matches(hdf5_layout.read_surface(surf_file), grid, dir_file,
                                              run_identity(settings, dir_file, grid.is_2d, kind))
            configuration.refuse_changed_parts(settings, kind, surf_file)
    comm.root_only(check)


def write_directions(settings, comm, dir_file, net, base, load_model, device):
    """Rank 0: make (or complete) the direction file, the run's first file: tensor by tensor, or
    in seed form with --dir_mode seed."""
    if not settings.curve_file:
        comm.root_only(lambda: direction_files.setup_direction_file(
            settings.directions, dir_file, net, base, load_model, seed_form=settings.directions.seed_form,
            device=device))


def open_directions(settings, dir_file, net, base, is_2d, device):
    """The run's directions, where --dir_mode keeps them (directions.sources); resident for
    stacked points (--points_per_call), which need them whole."""
    mode = 'resident' if settings.points_per_call > 1 and settings.dir_mode == 'auto' else settings.dir_mode
    return sources.open_directions(dir_file, mode, net, base, is_2d, device)


def prepare_run(settings, comm, net=None, train_dataset=None, test_dataset=None, differentiable=False):
    """Build everything a grid run needs on this rank (rank 0 makes the direction file). ``net``,
    ``train_dataset``, ``test_dataset``: objects given from Python instead of --model/--dataset;
    ``differentiable``: the run takes Hessians of the objective (checked on the probe batch).
    The settings were validated (grid_args.validate) before this is called."""
    runtime.keep_freed_memory()
    threads = runtime.set_threads(settings.threads, comm)
    device = select_device(settings.cuda, comm.local_rank)
    grid, dir_file, surf_file = plan_files(settings, comm)
    given = net is not None
    if given:   # before build_model copies it
        loading.check_model_tensors(net, device, 'model=')
    net, load_model = build_model(settings, net)
    release_freed_memory()   # what loading the checkpoint left in the heap
    if settings.device_map:
        # Spread over the devices: each tensor stays where accelerate put it (its hooks move the
        # activations), and the batches start where the first layer is.
        device = next(net.parameters()).device
    elif not given:
        loading.check_model_tensors(net, device, settings.model_flag())
    curve = connecting_curves.load_curve(settings.curve_file, net, load_model)[0] if settings.curve_file else None
    the_objective = objective.resolve(settings.loss_name)
    train_data, test_data = load_data(settings, device, comm, train_dataset, test_dataset)
    # The objective on the model as it is first: bad results are refused before anything is timed.
    value_keys, stderr_methods = probe_objective(the_objective, net if settings.device_map else net.to(device),
                                                 train_data, settings.amp, differentiable, samples=CHECK_SAMPLES)
    kind = configuration.HESSIAN if differentiable else configuration.SURFACE
    if settings.target_stderr is not None:
        settings = sample_budget.settle_samples(settings, comm, surf_file, net, the_objective, device, train_dataset)
        train_data, test_data = load_data(settings, device, comm, train_dataset, test_dataset)
    check_surface(settings, comm, kind, grid, dir_file, surf_file)   # before any timing or line printed
    if comm.is_root:
        runtime.warn_about_amp(settings, device)
    fold_given = settings.fold_bn is True
    settings, train_data, test_data, choice = choose_compute(
        settings, comm, kind, surf_file, grid, net, the_objective, train_data, test_data, device,
        lambda chosen: load_data(chosen, device, comm, train_dataset, test_dataset), threads)
    eval_net, folding = prepare_evaluation(settings, net, comm, device, (train_data, test_data), announce=fold_given)
    if eval_net is not net:   # folded, compiled or wrapped: it must take the batches too
        probe_objective(the_objective, eval_net, train_data, settings.amp, differentiable)
    # The centre, kept once (in the model's dtypes), where the model is: a copy of each tensor.
    base = subsets.get_base(net, settings.dir_type)
    write_directions(settings, comm, dir_file, net, base, load_model, device)
    directions = None if curve is not None else open_directions(settings, dir_file, net, base, grid.is_2d, device)
    release_freed_memory()   # what making, hashing and reading the directions left in the heap
    centre_buffers = [b.detach().clone() for b in net.buffers()] if settings.recomputes_statistics else None
    return Run(settings=settings, comm=comm, device=device, grid=grid, dir_file=dir_file, surf_file=surf_file,
               net=net, eval_net=eval_net, folding=folding, objective=the_objective, value_keys=value_keys,
               train_data=train_data, test_data=test_data, base=base, directions=directions,
               curve=None if curve is None else curve.to(device), centre_buffers=centre_buffers, compute=choice,
               kind=kind, stderr_methods=stderr_methods)


# ----------------------------------------------------------------------------- one point

@dataclasses.dataclass(frozen=True)
class PointSettings(ModelDataSettings):
    """The model and data at one point (hessian_spectrum.py, sharpness.py): their flags, typed."""
    include_params: str
    exclude_params: str

    def default_file(self, kind):
        """Where a script's results at this point go by default: beside --model_file, named after
        it, ``kind`` ('spectrum', 'sharpness'), the parameter subset and the data options."""
        name = f'{self.model_file or self.untrained_name_root()}_{kind}' + direction_files.subset_suffix(self.include_params, self.exclude_params)
        if self.raw_data:
            name += '_rawdata'
        if self.data_split > 1:
            name += f'_datasplit={self.data_split}_splitidx={self.split_idx}'
        return name + '.h5'

    def identity(self):
        """What a file of results at this point records, so a rerun for another model, data or
        objective is refused (paths absolute, Python objects described)."""
        identity = {}
        for key in ('model', 'model_file', 'dataset', 'raw_data', 'data_split', 'split_idx', 'loss_name',
                    'train_labels', 'include_params', 'exclude_params'):
            value = describe(getattr(self, key))
            if key in FACTORY_FIELDS:
                value = user_code.canonical_spec(value)
            identity[key] = os.path.realpath(value) if key in PATH_FIELDS and value else value
        if self.init_seed is not None:
            identity['init_seed'] = self.init_seed
        return identity


@dataclasses.dataclass
class Point:
    """The model at one point, on its device, with its objective and training batch source."""
    settings: PointSettings
    device: torch.device
    net: torch.nn.Module
    objective: objective.Objective
    data: object
    threads: str = ''   # what the compute line says of the CPU threads (runtime.set_threads)


def prepare_point(settings, comm):
    """Model, objective and training data for measurements at one point: the same steps as a grid
    run's (load_data, prepare_evaluation, probe_objective with gradients), no grid, no directions."""
    runtime.keep_freed_memory()
    threads = runtime.set_threads(settings.threads, comm)
    device = select_device(settings.cuda, comm.local_rank)
    net = loading.load(settings.dataset, settings.model, settings.model_file, init_seed=settings.rand_seed)
    loading.check_model_tensors(net, device, settings.model_flag())
    the_objective = objective.resolve(settings.loss_name)
    data = settings.batch_source(True, device, comm)
    net.to(device)
    probe_objective(the_objective, net, data, differentiable=True)
    return Point(settings=settings, device=device, net=net, objective=the_objective, data=data, threads=threads)
