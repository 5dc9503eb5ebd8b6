"""The objective: what is evaluated at a grid point, for any model, batch layout and loss.

An objective turns one batch into *sums* -- the batch's total loss and how many samples or tokens
that total covers, plus whatever else it counts -- and a whole data set's sums into the values a
surface stores. The stored loss is always the mean over the whole data set (sum of the batch sums
divided by the sum of the counts), never a mean of batch means, so the batch size changes only
speed, and batches of unequal size (the last one, or sequences with ignored tokens) weigh what
they hold.

``--loss_name`` picks one:
  crossentropy, mse  built in, for classifiers whose batches are (inputs, integer targets): the
                     softmax cross-entropy, or the original code's MSE between softmax outputs and
                     one-hot targets; also stores the accuracy (the default, as in the original)
  model              the model computes its own loss (Hugging Face style): called as model(**batch)
                     for a dict batch, model(*batch) for a tuple, model(batch) for a tensor; its
                     result has ``.loss`` (or is a scalar tensor), a mean over the batch, weighted by
                     the number of ``labels`` entries other than -100 when the batch holds labels,
                     else by the batch size
  causal_lm          the same for causal language models (the ...ForCausalLM convention: the model
                     shifts the labels by one token), weighted by the label positions other than
                     -100 after the shift; a dict batch without labels gets labels=input_ids; also
                     stores the perplexity, exp(mean token loss)
  package.module:fn  your own: fn(model, batch) -> dict of per-batch sums (see CustomObjective)

Values are named by key: 'loss' -> train_loss, 'acc' -> train_acc (percent), any other key K ->
train_K (and test_... with --eval_test). Each has its standard error beside it (K_stderr), and the
loss its paired rise above the centre (loss_rise, loss_rise_stderr): standard_errors.py.
"""
import inspect
import math
import re

import torch
import torch.nn.functional as F

from losslandscape.errors import UsageError
from losslandscape.io.hdf5_layout import STDERR_SUFFIX, rise_name, stderr_name
from losslandscape.objectives import standard_errors
from losslandscape.objectives.standard_errors import PER_BATCH, PER_SAMPLE, PER_SEQUENCE

CLASSIFICATION_LOSSES = ('crossentropy', 'mse')
MODEL_LOSSES = ('model', 'causal_lm')
LOSS_NAMES = CLASSIFICATION_LOSSES + MODEL_LOSSES
IGNORE_INDEX = -100                 # the label value PyTorch and Hugging Face losses skip
LOSS, COUNT, CORRECT, UNDEFINED = 'loss', 'count', 'correct', 'undefined'
ACC, PERPLEXITY = 'acc', 'perplexity'
KEY_PATTERN = re.compile(r'[A-Za-z][A-Za-z0-9_]*$')   # a key becomes part of an HDF5 dataset name
SQUARES_SUFFIX = '_sq'   # a custom objective's K_sq: the sum of squares of K's per-sample values
LOSS_RISE = rise_name(LOSS)


DEFAULT_LOSS = 'crossentropy'


def add_loss_argument(group, chosen=False):
    """--loss_name. ``chosen``: its default is None, which the script resolves from the model
    (grid_args.choose_model_and_loss: DEFAULT_LOSS, or from a Hugging Face folder's architecture)."""
    group.add_argument('--loss_name', default=None if chosen else DEFAULT_LOSS,
                       metavar='{' + ','.join(LOSS_NAMES) + '} or MODULE:FN',
                       help='what is evaluated: crossentropy or mse (softmax outputs against one-hot targets) '
                       'for classifiers; model (the model returns its own .loss); causal_lm (a causal language '
                       'model\'s mean token loss, plus perplexity); or package.module:function(model, batch) '
                       'returning a dict of batch sums with "loss" and "count" (README: "Any model, data and loss")'
                       + ('; default: crossentropy, or for a Hugging Face model folder as --model_file, chosen from '
                          'its architecture: causal_lm for a causal language model (...ForCausalLM, GPT2LMHeadModel), '
                          'else model' if chosen else ''))


def check_loss_name(loss_name):
    """Raise UsageError for a --loss_name that is neither built in nor a package.module:function."""
    resolve(loss_name)


def resolve(loss_name):
    """The Objective for a --loss_name value, or for a callable given from Python (api.py)."""
    if callable(loss_name):
        return CustomObjective(loss_name, describe_callable(loss_name))
    if loss_name in CLASSIFICATION_LOSSES:
        return ClassificationObjective(loss_name)
    if loss_name == 'model':
        return ModelLossObjective()
    if loss_name == 'causal_lm':
        return CausalLMObjective()
    if ':' in str(loss_name):
        from losslandscape.data import user_code
        fn = user_code.import_factory(loss_name, '--loss_name')
        try:
            inspect.signature(fn).bind(None, None)
        except TypeError as err:
            raise UsageError(f'--loss_name {loss_name!r} cannot be called as fn(model, batch) ({err})') from None
        except ValueError:   # no signature to check (a builtin): its first call tells
            pass
        return CustomObjective(fn, loss_name)
    raise UsageError(f'unknown --loss_name {loss_name!r}: use one of {", ".join(LOSS_NAMES)} '
                     'or package.module:function')


def describe_callable(fn):
    """How a loss function given from Python is recorded: module:qualified name, when it has them."""
    module, name = getattr(fn, '__module__', None), getattr(fn, '__qualname__', None)
    return f'{module}:{name}' if module and name else repr(fn)


class Objective:
    """The interface. ``sums_and_units`` returns the batch's sums, scalar tensors on the batch's
    device (accumulated there, so the host waits only once per data set), and its units for the
    standard errors: (each sample's or sequence's loss sum, their counts or None when each counts
    1), float64 1-D tensors, or None where the objective gives none (its errors are then estimated
    from the batches). ``finalize`` turns the data set's totals (floats) into the stored values,
    ``finalize_errors`` gives their standard errors; ``loss_sum`` is the differentiable batch loss
    sum the Hessian is taken of."""
    name = ''
    supports_stacked_points = False   # point_batching's vmap evaluator (built-in losses only)
    unit_method = None                # PER_SAMPLE or PER_SEQUENCE where sums_and_units gives units

    def sums(self, model, batch, amp=False):
        return self.sums_and_units(model, batch, amp, units=False)[0]

    def sums_and_units(self, model, batch, amp=False, units=True):
        raise NotImplementedError

    def finalize(self, totals):
        raise NotImplementedError

    def loss_sum(self, model, batch):
        return self.sums(model, batch)[LOSS]

    def value_keys(self, sums):
        """The keys ``finalize`` returns for batches that gave ``sums`` (from one probe batch)."""
        return list(self.finalize({k: 1.0 for k in sums}))

    def check_sums(self, sums):
        """Refuse (UsageError) sums of a probe batch that cannot give the standard errors."""

    def loss_stderr(self, totals, result):
        """The loss's standard error from the totals and the pass (standard_errors.PassResult)."""
        if self.unit_method is not None and result.units is not None:
            return standard_errors.units_stderr(result)
        return standard_errors.batch_stderr(result.batches[LOSS], result.batches[COUNT])

    def value_errors(self, totals, result, loss_stderr):
        """{value key: its standard error} for the values other than the loss."""
        return {}

    def stderr_methods(self, sums):
        """{value key (and the loss's rise): how its standard error is estimated
        (standard_errors.METHODS)}, for batches that gave ``sums``."""
        return {key: self.unit_method or PER_BATCH for key in [*self.value_keys(sums), LOSS_RISE]}

    def finalize_errors(self, totals, result, centre=None):
        """The standard error of every value (key K -> K_stderr) and, given the ``centre``
        (standard_errors.Centre), the loss's rise above it with its standard error."""
        loss_stderr = self.loss_stderr(totals, result)
        errors = {LOSS: loss_stderr, **self.value_errors(totals, result, loss_stderr)}
        values = {stderr_name(key): value for key, value in errors.items()}
        if centre is not None:
            rise, rise_stderr = standard_errors.rise_and_stderr(result, centre, LOSS, COUNT)
            values[LOSS_RISE], values[stderr_name(LOSS_RISE)] = rise, rise_stderr
        return values

    def by_product_keys(self, value_keys):
        """The keys finalize_errors adds to ``value_keys``: every value's standard error, and the
        loss's rise with its own."""
        return [stderr_name(key) for key in value_keys] + [LOSS_RISE, stderr_name(LOSS_RISE)]


def perplexity(loss):
    return math.exp(loss) if loss < 709 else math.inf


def perplexity_stderr(loss, loss_stderr):
    """The delta method: d exp(L) = exp(L) dL."""
    return perplexity(loss) * loss_stderr if math.isfinite(loss) else math.nan


def batch_inputs(batch):
    """The batch as model arguments: (args, kwargs)."""
    if isinstance(batch, dict):
        return (), batch
    if isinstance(batch, (list, tuple)):
        return tuple(batch), {}
    return (batch,), {}


def first_tensor(batch):
    """The first tensor of a batch (its leading dimension is the batch size)."""
    if torch.is_tensor(batch):
        return batch
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def as_scalar(value, key, source):
    """A batch sum as a float64 scalar tensor (kept on its device), or UsageError naming the key."""
    if isinstance(value, bool) or not (torch.is_tensor(value) or isinstance(value, (int, float))):
        raise UsageError(f'{source} returned {key!r} of type {type(value).__name__}; expected a number '
                         'or a one-element tensor')
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise UsageError(f'{source} returned {key!r} with shape {tuple(value.shape)}; expected a scalar '
                             '(a sum over the batch)')
        return value.detach().reshape(()).double()
    return torch.tensor(float(value), dtype=torch.float64)


# ----------------------------------------------------------------------------- built in

def per_sample_loss(outputs, targets, loss_name):
    """Each sample's loss. crossentropy: the usual softmax cross-entropy. mse: as the original
    code, the mean squared error between softmax probabilities and one-hot targets over the
    model's own number of outputs."""
    if loss_name == 'crossentropy':
        return F.cross_entropy(outputs, targets, reduction='none')
    if loss_name == 'mse':
        probs = F.softmax(outputs, dim=1)
        one_hot = F.one_hot(targets, num_classes=outputs.shape[1]).to(probs.dtype)
        return ((probs - one_hot) ** 2).mean(dim=1)
    raise ValueError(f'unknown loss {loss_name!r}; expected one of {CLASSIFICATION_LOSSES}')


def prediction_counts(outputs, targets):
    """(correct, undefined) counts over the last-but-one dimension. A sample whose outputs are not
    all finite (any inf or NaN) has no prediction and is counted as undefined: argmax would pick
    the NaN's class, or one of several infinite ones, and which one depends on the CPU's kernels
    (MKL's AVX-512 and AVX2 paths overflow differently), so no class is a meaningful answer."""
    undefined = ~torch.isfinite(outputs).all(dim=-1)
    correct = (outputs.argmax(dim=-1) == targets) & ~undefined
    return correct.sum(dim=-1), undefined.sum(dim=-1)


def accuracy_percent(correct, undefined, n):
    """Accuracy in percent; NaN where any sample had no prediction (a diverged point), so plots
    leave a gap there instead of drawing the share of one class."""
    return float('nan') if undefined else 100.0 * correct / n


class ClassificationObjective(Objective):
    """crossentropy / mse over (inputs, integer targets) batches, with the accuracy."""
    supports_stacked_points = True
    unit_method = PER_SAMPLE

    def __init__(self, loss_name):
        self.name = self.loss_name = loss_name

    def split(self, batch):
        if not (isinstance(batch, (list, tuple)) and len(batch) == 2 and torch.is_tensor(batch[1])):
            raise UsageError(f'--loss_name {self.loss_name} needs batches of (inputs, integer labels); '
                             'for other batches use --loss_name model, causal_lm or package.module:function')
        inputs, targets = batch
        return (inputs if inputs.is_floating_point() else inputs.float()), targets

    def sums_and_units(self, model, batch, amp=False, units=True):
        inputs, targets = self.split(batch)
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(inputs)
        return self.sums_of_outputs(outputs, targets)

    def sums_of_outputs(self, outputs, targets):
        """(sums, units) of a batch's outputs. The loss in float32 summed per batch, accumulated
        in float64 (as the suite always did); each sample's loss is a unit."""
        correct, undefined = prediction_counts(outputs, targets)
        losses = per_sample_loss(outputs.float(), targets, self.loss_name)
        return ({LOSS: losses.sum().double(), CORRECT: correct, UNDEFINED: undefined, COUNT: targets.shape[0]},
                (losses.double(), None))

    def loss_sum(self, model, batch):
        inputs, targets = self.split(batch)
        return per_sample_loss(model(inputs).float(), targets, self.loss_name).sum()

    def finalize(self, totals):
        n = totals[COUNT]
        return {LOSS: totals[LOSS] / n, ACC: accuracy_percent(totals[CORRECT], totals[UNDEFINED], n)}

    def value_errors(self, totals, result, loss_stderr):
        # A prediction is right or not: the squares of the 0/1 values are the values.
        n, correct = totals[COUNT], totals[CORRECT]
        return {ACC: math.nan if totals[UNDEFINED] else 100.0 * standard_errors.unit_stderr(correct, correct, n)}


class ModelLossObjective(Objective):
    """The model's own mean loss, weighted back into a sum (see the module docstring)."""
    name = 'model'
    source = '--loss_name model'

    def call(self, model, batch):
        args, kwargs = batch_inputs(batch)
        return model(*args, **kwargs)

    def weight(self, batch):
        labels = batch.get('labels') if isinstance(batch, dict) else None
        if torch.is_tensor(labels):
            return (labels != IGNORE_INDEX).sum()
        first = first_tensor(batch)
        if first is None or first.dim() == 0:
            raise UsageError(f'{self.source}: the batch holds no tensor with a batch dimension to count its samples')
        return first.shape[0]

    def mean_loss(self, result):
        loss = getattr(result, 'loss', None)
        if loss is None and torch.is_tensor(result):
            loss = result
        if not torch.is_tensor(loss) or loss.numel() != 1:
            raise UsageError(f'{self.source}: the model returned {type(result).__name__} without a scalar .loss; '
                             'pass labels in the batch, or use --loss_name package.module:function')
        return loss.reshape(())

    def loss_of_result(self, result, batch):
        """(the batch's loss sum, its weight) from the model's ``result``."""
        weight = self.weight(batch)
        mean = self.mean_loss(result).float()
        # A batch with no counted position has no mean (HF returns NaN there): it adds nothing.
        return torch.where(torch.as_tensor(weight) > 0, mean * weight, torch.zeros_like(mean)), weight

    def batch_loss_sum(self, model, batch):
        return self.loss_of_result(self.call(model, batch), batch)

    def sums_and_units(self, model, batch, amp=False, units=True):
        device = first_tensor(batch).device.type if first_tensor(batch) is not None else 'cpu'
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            result = self.call(model, batch)
            loss, weight = self.loss_of_result(result, batch)
            unit_values = self.units_of(result, batch, loss, weight) if units else None
        return {LOSS: loss.detach().double(), COUNT: weight}, unit_values

    # Per-sample (or per-sequence) losses are recomputed from the model's logits by the usual
    # cross-entropy of its kind, which the model's own mean loss is checked against once, on the
    # first batch: a model whose loss is another (a regression head, label smoothing) gets the
    # batch-level estimate instead. Undecided until then.
    unit_method = UNDECIDED = 'undecided'
    unit_kind = PER_SAMPLE
    shift = 0   # the labels' offset from the logits (causal language models predict the next token)
    UNITS_RTOL = 1e-4

    def units_of(self, result, batch, loss, weight):
        """(per-unit loss sums, their counts) of the batch, or None (see above)."""
        if self.unit_method is None:
            return None
        labels = batch.get('labels') if isinstance(batch, dict) else None
        if self.shift:
            labels = self.with_labels(batch)['labels']
        logits = getattr(result, 'logits', None)
        units = None
        if torch.is_tensor(labels) and torch.is_tensor(logits) and not labels.is_floating_point() \
                and labels.dim() >= 1 and logits.shape[:-1] == labels.shape and labels.shape[-1] > self.shift:
            if self.shift:
                # The labels move, not the logits: slicing the logits would copy them whole (for a
                # language model's head, the largest tensor of the pass); the last positions, which
                # predict nothing, get the ignored label and add exactly 0.
                labels = F.pad(labels[..., self.shift:], (0, self.shift), value=IGNORE_INDEX)
            token_losses = F.cross_entropy(logits.detach().float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction='none').view(labels.shape)
            units = (token_losses.reshape(labels.shape[0], -1).double().sum(dim=1),
                     (labels != IGNORE_INDEX).reshape(labels.shape[0], -1).sum(dim=1).double())
        if self.unit_method == self.UNDECIDED:
            agrees = units is not None and bool(torch.isclose(units[0].sum(), loss.detach().double(),
                                                              rtol=self.UNITS_RTOL, atol=1e-6))
            self.unit_method = self.unit_kind if agrees else None
        return units if self.unit_method is not None else None

    def loss_sum(self, model, batch):
        return self.batch_loss_sum(model, batch)[0]

    def finalize(self, totals):
        return {LOSS: totals[LOSS] / totals[COUNT] if totals[COUNT] else math.nan}


class CausalLMObjective(ModelLossObjective):
    """A causal language model's mean loss over every predicted token, and its perplexity."""
    name = 'causal_lm'
    source = '--loss_name causal_lm'
    unit_kind = PER_SEQUENCE
    shift = 1

    def with_labels(self, batch):
        if not isinstance(batch, dict):
            raise UsageError(f'{self.source} needs dict batches (input_ids, attention_mask, labels ...), '
                             f'got {type(batch).__name__}; use --loss_name model for other batches')
        if 'labels' not in batch:
            if 'input_ids' not in batch:
                raise UsageError(f'{self.source}: the batch has neither "labels" nor "input_ids"')
            batch = {**batch, 'labels': batch['input_ids']}
        return batch

    def call(self, model, batch):
        return model(**self.with_labels(batch))

    def weight(self, batch):
        labels = self.with_labels(batch)['labels']
        # The model predicts token t + 1 from tokens <= t: the first label of each row is never a target.
        return (labels[..., 1:] != IGNORE_INDEX).sum()

    def finalize(self, totals):
        loss = super().finalize(totals)[LOSS]
        return {LOSS: loss, PERPLEXITY: perplexity(loss)}

    def value_errors(self, totals, result, loss_stderr):
        return {PERPLEXITY: perplexity_stderr(self.finalize(totals)[LOSS], loss_stderr)}


class CustomObjective(Objective):
    """fn(model, batch) -> {'loss': sum of per-sample (or per-token) losses of the batch,
    'count': how many samples or tokens that sum covers, optional 'correct': how many of them are
    right (stored as the accuracy in percent), and any other key K: a sum stored as sum(K) /
    sum(count)}. Values are numbers or one-element tensors; 'loss' must be a tensor for the Hessian
    (plot_hessian_eigen.py differentiates it).

    Standard errors: 'loss_sq' (and K_sq for a key K), the sum of the squares of the per-sample
    values that 'loss' (K) sums, gives the per-sample estimate, each of the 'count' units weighing
    one; without it the estimate is the batch-level one. 'correct' needs none (0/1 values). The
    rise above the centre is always paired by batch: the function gives no per-sample values."""

    def __init__(self, fn, name):
        self.fn, self.name = fn, name
        self.source = f'--loss_name {name}'

    def call(self, model, batch):
        result = self.fn(model, batch)
        if not isinstance(result, dict):
            raise UsageError(f'{self.source} returned {type(result).__name__}; expected a dict of batch sums '
                             'with "loss" and "count"')
        missing = [k for k in (LOSS, COUNT) if k not in result]
        if missing:
            raise UsageError(f'{self.source} returned no {" and no ".join(repr(k) for k in missing)} '
                             f'(it returned {", ".join(map(repr, result)) or "an empty dict"})')
        for key in result:
            if not isinstance(key, str) or not KEY_PATTERN.match(key) or key in (ACC, UNDEFINED) \
                    or key.endswith(STDERR_SUFFIX):
                raise UsageError(f'{self.source} returned the key {key!r}: keys are names of letters, digits '
                                 f'and _ ({ACC!r} and {UNDEFINED!r} are reserved: return "correct" for an accuracy; '
                                 f'names ending in {STDERR_SUFFIX!r} are the standard errors the suite adds)')
            base = squared_key_base(key)
            if base is not None and (base not in result or base in (COUNT, CORRECT)):
                why = (f'{base!r} needs none' if base in (COUNT, CORRECT) else
                       f'it returned no {base!r} whose per-sample values they would be')
                raise UsageError(f'{self.source} returned {key!r}, which cannot give a standard error: a key '
                                 f'K{SQUARES_SUFFIX} is the sum of squares of the per-sample values of K, and {why}')
        return result

    def sums_and_units(self, model, batch, amp=False, units=True):
        device = first_tensor(batch).device.type if first_tensor(batch) is not None else 'cpu'
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            result = self.call(model, batch)
        return {key: as_scalar(value, key, self.source) for key, value in result.items()}, None

    def check_sums(self, sums):
        """Each K_sq of the probe batch must be a sum of squares of values summing to K over the
        'count' units: at least K^2 / count (Cauchy-Schwarz), so never negative."""
        count = float(sums[COUNT])
        for key, value in sums.items():
            base = squared_key_base(key)
            if base is None:
                continue
            squares, total = float(value), float(sums[base])
            if not (squares >= 0 and count > 0 and squares * count >= total * total * (1 - 1e-6) - 1e-12):
                raise UsageError(f'{self.source} returned {key!r} = {squares:g}, which cannot give a standard error: '
                                 f'a sum of squares of {count:g} values summing to {base!r} = {total:g} is at least '
                                 f'{total * total / count if count > 0 else math.inf:g}')

    def stderr_methods(self, sums):
        methods = {}
        for key in self.value_keys(sums):
            source = CORRECT if key == ACC else key
            methods[key] = PER_SAMPLE if source == CORRECT or source + SQUARES_SUFFIX in sums else PER_BATCH
        methods[LOSS_RISE] = PER_BATCH
        return methods

    def key_stderr(self, key, totals, result):
        """The standard error of value ``key``: per sample from its squares (0/1 values for the
        accuracy), else from the batches."""
        source = CORRECT if key == ACC else key
        squares = totals[CORRECT] if key == ACC else totals.get(key + SQUARES_SUFFIX)
        if squares is not None:
            stderr = standard_errors.unit_stderr(totals[source], squares, totals[COUNT])
        else:
            stderr = standard_errors.batch_stderr(result.batches[source], result.batches[COUNT])
        return 100.0 * stderr if key == ACC else stderr

    def loss_stderr(self, totals, result):
        return self.key_stderr(LOSS, totals, result)

    def value_errors(self, totals, result, loss_stderr):
        return {key: self.key_stderr(key, totals, result) for key in self.finalize(totals) if key != LOSS}

    def loss_sum(self, model, batch):
        loss = self.call(model, batch)[LOSS]
        if not (torch.is_tensor(loss) and loss.numel() == 1 and loss.requires_grad):
            raise UsageError(f'{self.source}: the Hessian needs "loss" as a scalar tensor computed from the '
                             'model\'s parameters (it returned one without a gradient)')
        return loss.reshape(())

    def finalize(self, totals):
        count = totals[COUNT]
        values = {LOSS: totals[LOSS] / count if count else math.nan}
        if CORRECT in totals:
            values[ACC] = 100.0 * totals[CORRECT] / count if count else math.nan
        for key, total in totals.items():
            if key not in (LOSS, COUNT, CORRECT) and squared_key_base(key) is None:
                values[key] = total / count if count else math.nan
        return values


def squared_key_base(key):
    """K for a custom objective's key K_sq (K's sum of squares), else None."""
    return key[:-len(SQUARES_SUFFIX)] if key.endswith(SQUARES_SUFFIX) and len(key) > len(SQUARES_SUFFIX) else None


# ----------------------------------------------------------------------------- a whole data set

class DataSetPass:
    """One pass of an objective over a data set at one point: the totals (as the objective sums
    them, batch by batch) and what the standard errors need (standard_errors.Pass). ``centre``: the
    centre's standard_errors.Centre, to pair the rise with; ``keep_units``: become one."""

    def __init__(self, objective, centre=None, keep_units=False):
        self.objective, self.centre, self.totals = objective, centre, {}
        self.errors = standard_errors.Pass(LOSS, centre, keep_units)

    def add(self, sums, units):
        for key, value in sums.items():
            self.totals[key] = self.totals[key] + value if key in self.totals else value
        self.errors.add(sums, units)

    def values(self):
        """(the values with their standard errors (and rise), the standard_errors.PassResult)."""
        totals = {key: value.item() if torch.is_tensor(value) else float(value) for key, value in self.totals.items()}
        result = self.errors.result()
        values = self.objective.finalize(totals)
        values.update(self.objective.finalize_errors(totals, result, self.centre))
        return values, result


def accumulate(objective, model, source, amp=False, centre=None, keep_units=False):
    """A DataSetPass over every batch of ``source`` (a batch source (data.batch_sources)): summed on
    the device, read at the end."""
    one_pass = DataSetPass(objective, centre, keep_units)
    for batch in source.batches():
        one_pass.add(*objective.sums_and_units(model, batch, amp))
    return one_pass


@torch.inference_mode()
def evaluate(model, source, objective, amp=False, centre=None):
    """The objective's values (loss, acc, ..., each K with K_stderr) of ``model`` in eval mode over
    ``source``; given the ``centre`` (evaluate_centre), also the loss's rise above it."""
    model.eval()
    return accumulate(objective, model, source, amp, centre).values()[0]


@torch.inference_mode()
def evaluate_centre(model, source, objective, amp=False):
    """(evaluate's values, the standard_errors.Centre that later points pair their rise with):
    ``model`` is at the centre."""
    model.eval()
    values, result = accumulate(objective, model, source, amp, keep_units=True).values()
    return values, result.centre


def total_count(objective, model, source):
    """The data set's total count (samples or counted tokens): what the Hessian's mean divides by.
    Counts never depend on the weights, so one pass at any point gives it."""
    with torch.inference_mode():
        model.eval()
        total = 0
        for batch in source.batches():
            total = total + objective.sums(model, batch)[COUNT]
        return total.item() if torch.is_tensor(total) else float(total)
