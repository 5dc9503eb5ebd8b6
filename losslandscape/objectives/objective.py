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
train_K (and test_... with --eval_test).
"""
import inspect
import math
import re

import torch
import torch.nn.functional as F

from losslandscape.errors import UsageError

CLASSIFICATION_LOSSES = ('crossentropy', 'mse')
MODEL_LOSSES = ('model', 'causal_lm')
LOSS_NAMES = CLASSIFICATION_LOSSES + MODEL_LOSSES
IGNORE_INDEX = -100                 # the label value PyTorch and Hugging Face losses skip
LOSS, COUNT, CORRECT, UNDEFINED = 'loss', 'count', 'correct', 'undefined'
ACC, PERPLEXITY = 'acc', 'perplexity'
KEY_PATTERN = re.compile(r'[A-Za-z][A-Za-z0-9_]*$')   # a key becomes part of an HDF5 dataset name


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
    """The interface. ``sums`` returns scalar tensors on the batch's device (accumulated there, so
    the host waits only once per data set); ``finalize`` turns the data set's totals (floats) into
    the stored values; ``loss_sum`` is the differentiable batch loss sum the Hessian is taken of."""
    name = ''
    supports_stacked_points = False   # point_batching's vmap evaluator (built-in losses only)

    def sums(self, model, batch, amp=False):
        raise NotImplementedError

    def finalize(self, totals):
        raise NotImplementedError

    def loss_sum(self, model, batch):
        return self.sums(model, batch)[LOSS]

    def value_keys(self, sums):
        """The keys ``finalize`` returns for batches that gave ``sums`` (from one probe batch)."""
        return list(self.finalize({k: 1.0 for k in sums}))


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

    def __init__(self, loss_name):
        self.name = self.loss_name = loss_name

    def split(self, batch):
        if not (isinstance(batch, (list, tuple)) and len(batch) == 2 and torch.is_tensor(batch[1])):
            raise UsageError(f'--loss_name {self.loss_name} needs batches of (inputs, integer labels); '
                             'for other batches use --loss_name model, causal_lm or package.module:function')
        inputs, targets = batch
        return (inputs if inputs.is_floating_point() else inputs.float()), targets

    def sums(self, model, batch, amp=False):
        inputs, targets = self.split(batch)
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(inputs)
        return self.sums_of_outputs(outputs, targets)

    def sums_of_outputs(self, outputs, targets):
        # The loss in float32 summed per batch, accumulated in float64 (as the suite always did).
        correct, undefined = prediction_counts(outputs, targets)
        return {LOSS: per_sample_loss(outputs.float(), targets, self.loss_name).sum().double(),
                CORRECT: correct, UNDEFINED: undefined, COUNT: targets.shape[0]}

    def loss_sum(self, model, batch):
        inputs, targets = self.split(batch)
        return per_sample_loss(model(inputs).float(), targets, self.loss_name).sum()

    def finalize(self, totals):
        n = totals[COUNT]
        return {LOSS: totals[LOSS] / n, ACC: accuracy_percent(totals[CORRECT], totals[UNDEFINED], n)}


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

    def batch_loss_sum(self, model, batch):
        weight = self.weight(batch)
        mean = self.mean_loss(self.call(model, batch)).float()
        # A batch with no counted position has no mean (HF returns NaN there): it adds nothing.
        return torch.where(torch.as_tensor(weight) > 0, mean * weight, torch.zeros_like(mean)), weight

    def sums(self, model, batch, amp=False):
        device = first_tensor(batch).device.type if first_tensor(batch) is not None else 'cpu'
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss, weight = self.batch_loss_sum(model, batch)
        return {LOSS: loss.detach().double(), COUNT: weight}

    def loss_sum(self, model, batch):
        return self.batch_loss_sum(model, batch)[0]

    def finalize(self, totals):
        return {LOSS: totals[LOSS] / totals[COUNT] if totals[COUNT] else math.nan}


class CausalLMObjective(ModelLossObjective):
    """A causal language model's mean loss over every predicted token, and its perplexity."""
    name = 'causal_lm'
    source = '--loss_name causal_lm'

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
        return {LOSS: loss, PERPLEXITY: math.exp(loss) if loss < 709 else math.inf}


class CustomObjective(Objective):
    """fn(model, batch) -> {'loss': sum of per-sample (or per-token) losses of the batch,
    'count': how many samples or tokens that sum covers, optional 'correct': how many of them are
    right (stored as the accuracy in percent), and any other key K: a sum stored as sum(K) /
    sum(count)}. Values are numbers or one-element tensors; 'loss' must be a tensor for the Hessian
    (plot_hessian_eigen.py differentiates it)."""

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
            if not isinstance(key, str) or not KEY_PATTERN.match(key) or key in (ACC, UNDEFINED):
                raise UsageError(f'{self.source} returned the key {key!r}: keys are names of letters, digits '
                                 f'and _ ({ACC!r} and {UNDEFINED!r} are reserved: return "correct" for an accuracy)')
        return result

    def sums(self, model, batch, amp=False):
        device = first_tensor(batch).device.type if first_tensor(batch) is not None else 'cpu'
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            result = self.call(model, batch)
        return {key: as_scalar(value, key, self.source) for key, value in result.items()}

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
            if key not in (LOSS, COUNT, CORRECT):
                values[key] = total / count if count else math.nan
        return values


# ----------------------------------------------------------------------------- a whole data set

def accumulate(objective, model, source, amp=False):
    """The objective's totals over every batch of ``source`` (a batch source (data.batch_sources)), as
    floats: summed on the device, read once at the end."""
    totals = {}
    for batch in source.batches():
        for key, value in objective.sums(model, batch, amp).items():
            totals[key] = totals[key] + value if key in totals else value
    return {key: value.item() if torch.is_tensor(value) else float(value) for key, value in totals.items()}


@torch.inference_mode()
def evaluate(model, source, objective, amp=False):
    """The objective's values (loss, acc, ...) of ``model`` in eval mode over ``source``."""
    model.eval()
    return objective.finalize(accumulate(objective, model, source, amp))


def total_count(objective, model, source):
    """The data set's total count (samples or counted tokens): what the Hessian's mean divides by.
    Counts never depend on the weights, so one pass at any point gives it."""
    with torch.inference_mode():
        model.eval()
        return accumulate(objective, model, source)[COUNT]
