"""Curves of low loss between two trained models: mode connectivity (Garipov et al., NeurIPS 2018;
Draxler et al., ICML 2018).

A curve phi(t) runs through weight space from model A (t = 0) to model B (t = 1) by way of
``num_bends`` control points theta_0 = A, theta_1 .. theta_{n-1} (the bends, trained), theta_n = B,
with n = num_bends - 1:

  bezier     phi(t) = sum_i C(n, i) t^i (1 - t)^(n - i) theta_i     (the Bernstein basis; num_bends
             3 is Garipov et al.'s quadratic curve with one bend, which it does not pass through)
  polychain  the broken line through theta_0 .. theta_n, with theta_i at t = i / n

Bends placed evenly on the straight line (how training starts) make either curve the straight
line, A + t (B - A). At t = 0 and t = 1 every coefficient but the end's is exactly 0 and the end's
exactly 1, and ``weights`` then returns the end's tensors themselves: the curve's ends are the end
models bit for bit.

Only the parameters lie on the curve. BatchNorm running statistics are not interpolated: at every
evaluated t they are recomputed from the training data with the weights at t (bn_statistics.py).
Any other floating buffer must be the same in both models (it is taken from model A).

Training (train_curve.py) minimises the expected loss over t ~ U[0, 1] -- one t per mini-batch --
with the ends fixed: torch.func.functional_call runs the model with the curve's weights at t, so
the bends are the only tensors that get gradients. BatchNorm layers use batch statistics then, as
they did when the end models were trained. Each epoch's batch order and t values come from a
generator seeded by (seed, epoch), so a run resumed at an epoch boundary repeats exactly what an
uninterrupted run does.
"""
import copy
import hashlib
import math

import numpy as np
import torch
from torch.func import functional_call

from losslandscape.curves import bn_statistics
from losslandscape.data import batch_sources
from losslandscape.errors import UsageError
from losslandscape.io import hdf5_layout as layout
from losslandscape.models import loading
from losslandscape.objectives import objective

CURVE_TYPES = ('bezier', 'polychain')
MIN_BENDS = 2                             # the ends alone: the straight line, nothing to train
LOW_PRECISION = (torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- the parametrisation

def coefficients(curve_type, num_bends, t):
    """The weight of each control point (A first, B last) in phi(t); they sum to 1. A Bezier curve
    is defined on [0, 1] only; a polychain beyond it continues its first or last segment."""
    n = num_bends - 1
    if curve_type == 'bezier':
        # Python's 0.0 ** 0 is 1.0: exactly [1, 0, ..., 0] at t = 0 and [0, ..., 0, 1] at t = 1.
        return [math.comb(n, i) * t ** i * (1 - t) ** (n - i) for i in range(num_bends)]
    if curve_type == 'polychain':
        segment = min(max(math.floor(t * n), 0), n - 1)
        u = t * n - segment            # exactly 0 at t = 0, exactly 1 at t = 1
        weights = [0.0] * num_bends
        weights[segment], weights[segment + 1] = 1 - u, u
        return weights
    raise ValueError(f'unknown curve type {curve_type!r}; expected one of {CURVE_TYPES}')


def combine(weights, tensors):
    """sum_i weights[i] * tensors[i], skipping zero weights; a lone weight of 1 returns its tensor
    itself (the curve's exact ends)."""
    terms = [(w, x) for w, x in zip(weights, tensors) if w != 0.0]
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    total = terms[0][1] * terms[0][0]
    for w, x in terms[1:]:
        total = total + x * w
    return total


def _working_dtype(tensor):
    """The dtype a control point is held in: float32 for low-precision models, so a point's
    weights are computed in float32 and rounded once when placed."""
    return torch.float32 if tensor.dtype in LOW_PRECISION else tensor.dtype


def _working_copy(tensor):
    return tensor.detach().clone().to(_working_dtype(tensor))


class Curve:
    """A curve through the parameter space of one architecture. ``names``: the parameter names
    (net.named_parameters() order); ``control_points``: num_bends lists of tensors in that order,
    A first and B last."""

    def __init__(self, curve_type, names, control_points):
        if curve_type not in CURVE_TYPES:
            raise UsageError(f'unknown curve type {curve_type!r}: use one of {", ".join(CURVE_TYPES)}')
        if len(control_points) < MIN_BENDS:
            raise UsageError(f'a curve needs at least {MIN_BENDS} control points (its two ends)')
        self.curve_type, self.names, self.control_points = curve_type, list(names), control_points

    @property
    def num_bends(self):
        return len(self.control_points)

    @property
    def bends(self):
        """The trainable control points (every one but the ends)."""
        return self.control_points[1:-1]

    def weights(self, t):
        """phi(t): one tensor per parameter (the end's own tensors at t = 0 and t = 1)."""
        c = coefficients(self.curve_type, self.num_bends, t)
        return [combine(c, [point[j] for point in self.control_points]) for j in range(len(self.names))]

    @torch.no_grad()
    def place(self, net, t):
        """Set ``net``'s parameters to phi(t) (its buffers are left as they are)."""
        for p, w in zip(net.parameters(), self.weights(t)):
            p.copy_(w)

    def to(self, device):
        self.control_points = [[x.to(device) for x in point] for point in self.control_points]
        return self

    def named_bends(self):
        """The bends as {name: float32 array} (the curve file's layout)."""
        return [{n: x.detach().float().cpu().numpy() for n, x in zip(self.names, bend)} for bend in self.bends]


def straight_bends(start, end, num_bends):
    """Bends evenly spaced on the straight line from ``start`` to ``end`` (lists of tensors): the
    curve they make, Bezier or polychain, is that line."""
    n = num_bends - 1
    return [[((1 - i / n) * a.double() + (i / n) * b.double()).to(a.dtype) for a, b in zip(start, end)]
            for i in range(1, n)]


def parameters_of(net):
    """(names, working copies of the parameters) of ``net``, in named_parameters order."""
    named = list(net.named_parameters())
    return [n for n, _ in named], [_working_copy(p) for _, p in named]


# ----------------------------------------------------------------------------- the end models

def state_content_hash(state):
    """A hash of a state_dict's content (names, dtypes, shapes, values), as the curve file records
    each end checkpoint's: independent of how the checkpoint file was written."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f'{name}:{tensor.dtype}:{tuple(tensor.shape)}'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def checkpoint_hash(path, flag):
    return state_content_hash(loading.read_state_dict(path, flag))


def check_end_models(net_a, net_b, flag_a='--model_file', flag_b='--model_file2'):
    """Refuse two end models a curve cannot join: the same weights (no path to train), or
    floating buffers other than BatchNorm statistics that differ (the curve takes them from A)."""
    if all(torch.equal(p, q) for p, q in zip(net_a.parameters(), net_b.parameters())):
        raise UsageError(f'{flag_a} and {flag_b} hold the same weights: a curve between them has no length')
    statistics = {id(b) for m in bn_statistics.batchnorm_layers(net_a) for b in m.buffers()}
    for (name, a), b in zip(net_a.named_buffers(), net_b.buffers()):
        if id(a) not in statistics and a.is_floating_point() and not torch.equal(a, b):
            raise UsageError(f'{flag_a} and {flag_b} differ in the buffer {name!r}, which is not a BatchNorm '
                             'statistic: a curve moves the parameters only, so both ends must share it')


def load_curve(path, net, load_model, what='--curve_file'):
    """(Curve, CurveRecord) of the curve file ``path`` for ``net``'s architecture. The ends are
    loaded with ``load_model(path, flag)`` from the checkpoints the file names and checked against
    the content hashes it records; the bends must fit ``net``'s parameters."""
    record = layout.read_curve_file(path, what)
    ends = []
    for key, hash_key, end in ((layout.CURVE_START_FILE, layout.CURVE_START_HASH, 't = 0'),
                               (layout.CURVE_END_FILE, layout.CURVE_END_HASH, 't = 1')):
        checkpoint = record.attrs[key]
        flag = f'{what} {path!r}: its {end} checkpoint'
        if checkpoint_hash(checkpoint, flag) != record.attrs[hash_key]:
            raise UsageError(f'{flag} {checkpoint!r} has changed since the curve was trained; '
                             'train the curve again (train_curve.py)')
        ends.append(parameters_of(load_model(checkpoint, flag))[1])
    names = parameters_of(net)[0]
    bends = stored_bends(record, net, what)
    return Curve(record.curve_type, names, [ends[0], *bends, ends[1]]), record


def stored_bends(record, net, what):
    """The bends of a CurveRecord as lists of tensors in ``net``'s parameter order, or UsageError
    when they do not fit ``net`` (a curve file of another model)."""
    named = list(net.named_parameters())
    bends = []
    for i, stored in enumerate(record.bends):
        for name, p in named:
            if name not in stored or tuple(stored[name].shape) != tuple(p.shape):
                found = 'missing' if name not in stored else f'of shape {tuple(stored[name].shape)}'
                raise UsageError(f'{what} {record.path!r} does not fit the model: bend {i} parameter {name!r} is '
                                 f'{found} (it is a curve of --model {record.attrs[layout.CURVE_MODEL]!r})')
        extra = sorted(set(stored) - {name for name, _ in named})
        if extra:
            raise UsageError(f'{what} {record.path!r} does not fit the model: bend {i} has the unexpected '
                             f'parameter {extra[0]!r} (it is a curve of --model {record.attrs[layout.CURVE_MODEL]!r})')
        bends.append([torch.as_tensor(stored[name]).to(_working_dtype(p)) for name, p in named])
    return bends


# ----------------------------------------------------------------------------- training

def epoch_batches(source, generator):
    """One epoch's training batches of a batch source (data.batch_sources), in an order drawn from
    ``generator``: the built-in data sets reshuffled sample by sample (as cifar10.main trains), other
    resident sources as their fixed batches in a shuffled order (collated batches cannot be
    regrouped without collating again); a streamed source in its own fixed order."""
    if isinstance(source, batch_sources.CachedBatches):
        data = source.data
        order = torch.randperm(len(data), generator=generator).to(data.device)
        for start in range(0, len(data), source.batch_size):
            idx = order[start:start + source.batch_size]
            inputs, targets = data.normalize(data.inputs[idx]), data.targets[idx]
            yield inputs.to(source.device), targets.to(source.device)
        return
    if source.streamed:
        yield from source.batches()
        return
    batches = list(source.batches())
    for i in torch.randperm(len(batches), generator=generator).tolist():
        yield batches[i]


class ModelAt:
    """``net`` run with other parameters (torch.func.functional_call), callable as the model itself
    by an objective; attributes are the model's own."""

    def __init__(self, net, parameters):
        self.net, self.parameters_now = net, parameters

    def __call__(self, *args, **kwargs):
        return functional_call(self.net, self.parameters_now, args, kwargs)

    def __getattr__(self, name):
        return getattr(self.net, name)


def make_optimizer(curve, lr, momentum, weight_decay):
    """SGD over the bends only (Nesterov momentum when momentum > 0, as cifar10.main); None for a
    curve without bends."""
    tensors = [x for bend in curve.bends for x in bend]
    if not tensors:
        return None
    for x in tensors:
        x.requires_grad_(True)
    return torch.optim.SGD(tensors, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)


def momentum_buffers(curve, optimizer):
    """SGD's momentum buffers as the curve file stores them ({name: array} per bend), or None."""
    if optimizer is None or not any('momentum_buffer' in optimizer.state.get(x, {}) for b in curve.bends for x in b):
        return None
    return [{n: optimizer.state[x]['momentum_buffer'].detach().float().cpu().numpy() for n, x in zip(curve.names, bend)}
            for bend in curve.bends]


def load_momentum_buffers(curve, optimizer, buffers):
    """Put stored momentum buffers (momentum_buffers' form) back into ``optimizer``."""
    if optimizer is None or buffers is None:
        return
    for bend, stored in zip(curve.bends, buffers):
        for name, x in zip(curve.names, bend):
            optimizer.state[x]['momentum_buffer'] = torch.as_tensor(stored[name]).to(x.device, x.dtype)


def train_epoch(curve, net, source, the_objective, optimizer, lr, generator):
    """One epoch: for every mini-batch a t ~ U[0, 1], the mean loss of phi(t) over the batch's
    samples, one SGD step on the bends. Returns the mean of the batch losses, weighted by their sizes."""
    for group in optimizer.param_groups:
        group['lr'] = lr   # set, not multiplied: a resumed run gets its epoch's rate
    # Dropout and other random layers draw from torch's global generator: seeded from the epoch's.
    torch.manual_seed(int(torch.randint(2 ** 62, (), generator=generator)))
    net.train()
    total, seen = 0.0, 0
    for batch in epoch_batches(source, generator):
        t = float(torch.rand((), generator=generator, dtype=torch.float64))
        at_t = ModelAt(net, dict(zip(curve.names, curve.weights(t))))
        size = objective.first_tensor(batch).shape[0]
        loss_sum = the_objective.loss_sum(at_t, batch)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / size).backward()
        optimizer.step()
        total = total + loss_sum.detach().double()   # summed on the device, read once
        seen += size
    net.eval()
    return float(total) / seen


# ----------------------------------------------------------------------------- evaluating a point

def evaluate_at(curve, net, t, train_source, sources, the_objective):
    """{prefix: values} of phi(t) with BatchNorm statistics recomputed over ``train_source``, for
    each (prefix, batch source) of ``sources``."""
    curve.place(net, t)
    bn_statistics.recompute(net, train_source, the_objective)
    return {prefix: objective.evaluate(net, source, the_objective) for prefix, source in sources}


# ----------------------------------------------------------------------------- the plane of a curve

def bend_model(path, template, what='--model_file3'):
    """A copy of ``template`` whose parameters are the one bend of the curve file ``path`` (its
    buffers stay the template's)."""
    record = layout.read_curve_file(path, what)
    if len(record.bends) != 1:
        raise UsageError(f'{what} {path!r} is a curve with {len(record.bends)} bends; the plane through its ends '
                         'and its bend needs a curve of --num_bends 3 (one bend)')
    model = copy.deepcopy(template)
    with torch.no_grad():
        for p, b in zip(model.parameters(), stored_bends(record, model, what)[0]):
            p.copy_(b)
    return model.eval()


def loader_taking_bends(load_model, template):
    """``load_model(path, flag)`` that also takes a curve file for --model_file3, standing for the
    model at the curve's bend: the plane of --model_file, --model_file2 and --model_file3 is then
    the plane through the curve's two ends and its bend, which holds the whole curve."""
    def load(path, flag='--model_file'):
        if flag == '--model_file3' and layout.is_curve_file(path):
            return bend_model(path, template)
        return load_model(path, flag)
    return load


def plane_coordinates(curve_type, ts):
    """(x, y) of phi(t) for each t of ``ts`` in the plane A + x (B - A) + y (bend - A) of a curve
    with one bend: phi(t) = c_A A + c_bend bend + c_B B with c_A = 1 - c_bend - c_B, so x = c_B and
    y = c_bend, exactly (Bezier: (t^2, 2t(1 - t)))."""
    coeffs = np.array([coefficients(curve_type, 3, float(t)) for t in ts])
    return coeffs[:, 2], coeffs[:, 1]
