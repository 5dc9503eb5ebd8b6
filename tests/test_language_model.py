"""A language model end to end, with nothing downloaded (examples/tiny_lm): a tiny Hugging Face
GPT-2 built from a config, trained briefly on the text bundled with scikit-learn, and its loss
surface with --loss_name causal_lm and with a custom objective, restricted by --include_params."""
import fnmatch
import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('transformers', reason="transformers is not installed (pip install -e '.[test]')")

from examples.tiny_lm import data as tiny_data  # noqa: E402
from examples.tiny_lm.model import tiny_gpt  # noqa: E402
from examples.tiny_lm.objectives import token_cross_entropy  # noqa: E402
from examples.tiny_lm.train import dataset_loss, train  # noqa: E402
from losslandscape.io import hdf5_layout
from tests.conftest import ROOT, run_script  # noqa: E402

BLOCK = 'transformer.h.1.*'
DIRECTIONS = ['--xnorm', 'filter', '--xignore', 'biasbn', '--ynorm', 'filter', '--yignore', 'biasbn']


def batch_of(dataset, rows):
    """The batch the suite's default_collate makes of these items."""
    return torch.utils.data.default_collate([dataset[i] for i in rows])


def independent_mean_and_accuracy(model, dataset):
    """Mean cross-entropy over every predicted token of the data set and top-1 accuracy (%),
    straight from the logits of the whole data set in one pass, in float64."""
    with torch.no_grad():
        logits = model(input_ids=dataset.input_ids).logits[:, :-1].double()
    targets = dataset.labels[:, 1:]
    keep = targets != -100
    ce = F.cross_entropy(logits[keep], targets[keep], reduction='sum').item()
    correct = (logits[keep].argmax(-1) == targets[keep]).sum().item()
    count = int(keep.sum())
    return ce / count, 100.0 * correct / count


def load_trained(path):
    model = tiny_gpt()
    model.load_state_dict(torch.load(path, weights_only=True)['state_dict'], strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- (a) data

def test_windows_shapes_vocabulary_and_split():
    train_set, test_set = tiny_data.char_text(root='ignored', train=True), tiny_data.char_text('ignored', False)
    assert 0 < len(train_set) <= tiny_data.MAX_TRAIN_WINDOWS and 0 < len(test_set) <= tiny_data.MAX_TEST_WINDOWS
    item = train_set[0]
    assert set(item) == {'input_ids', 'labels'}
    for dataset in (train_set, test_set):
        for i in (0, len(dataset) - 1):
            for key in ('input_ids', 'labels'):
                assert dataset[i][key].shape == (tiny_data.WINDOW,) and dataset[i][key].dtype == torch.long
        assert torch.equal(dataset.labels, dataset.input_ids)      # nothing ignored in char_text
        assert 0 <= int(dataset.input_ids.min()) and int(dataset.input_ids.max()) < tiny_data.VOCAB_SIZE
    # The windows are the start of each split, in order, without overlap.
    train_text, test_text = tiny_data.split_text(True), tiny_data.split_text(False)
    for dataset, text in ((train_set, train_text), (test_set, test_text)):
        assert torch.equal(dataset.input_ids.flatten(), tiny_data.encode(text[:len(dataset) * tiny_data.WINDOW]))
    assert train_text + test_text == tiny_data.corpus_text()
    assert len(test_text) == len(tiny_data.corpus_text()) - int(len(tiny_data.corpus_text()) * 0.9)
    # default_collate stacks the dicts into the model's keyword arguments.
    batch = batch_of(train_set, range(5))
    assert batch['input_ids'].shape == batch['labels'].shape == (5, tiny_data.WINDOW)


def test_vocabulary_is_fixed():
    assert tiny_data.VOCAB_SIZE == 97
    assert tiny_data.encode('\n A~').tolist() == [0, 1, 34, 95]
    assert tiny_data.encode('\t\u00e9').tolist() == [tiny_data.UNKNOWN_ID] * 2
    assert tiny_data.decode(tiny_data.encode('Iris plants\n')) == 'Iris plants\n'


def test_masked_variant_ignores_the_prompt_positions():
    plain, masked = tiny_data.char_text(None, True), tiny_data.char_text_masked(None, True)
    assert torch.equal(plain.input_ids, masked.input_ids)
    prompt = tiny_data.PROMPT_LENGTH
    assert (masked.labels[:, :prompt] == -100).all()
    assert torch.equal(masked.labels[:, prompt:], masked.input_ids[:, prompt:])
    assert int((masked.labels == -100).sum()) == prompt * len(masked)


def test_data_is_deterministic():
    for factory in (tiny_data.char_text, tiny_data.char_text_masked):
        for train_split in (True, False):
            a, b = factory('x', train_split), factory('elsewhere', train_split)
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)


# ----------------------------------------------------------------------------- (b) model

def test_state_dict_round_trips_through_a_strict_load():
    torch.manual_seed(0)
    trained = tiny_gpt()
    with torch.no_grad():        # weights unlike a fresh model's, the tied embedding included
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = trained.state_dict()
    assert 'lm_head.weight' in state and 'transformer.wte.weight' in state   # tied: both names
    assert not any(k.endswith(('.attn.bias', '.masked_bias')) for k in state)   # no mask buffers
    buffer = io.BytesIO()
    torch.save({'state_dict': state, 'step': 3}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded['step'] == 3
    torch.manual_seed(1)
    fresh = tiny_gpt()
    result = fresh.load_state_dict(loaded['state_dict'], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert fresh.lm_head.weight is fresh.transformer.wte.weight              # still tied
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    ids = tiny_data.char_text(None, True).input_ids[:4]
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_model_is_deterministic_in_eval():
    model = tiny_gpt()
    assert not model.training
    ids = tiny_data.char_text(None, True).input_ids[:3]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert model.config.resid_pdrop == model.config.embd_pdrop == model.config.attn_pdrop == 0


# ----------------------------------------------------------------------------- (c) objective

@pytest.mark.parametrize('factory', [tiny_data.char_text, tiny_data.char_text_masked])
def test_token_cross_entropy_sums_match_the_models_mean(factory):
    torch.manual_seed(0)
    model = tiny_gpt()
    dataset = factory(None, True)
    batch = batch_of(dataset, range(6))
    with torch.no_grad():
        sums = token_cross_entropy(model, batch)
        hf_mean = model(**batch).loss.item()
    predicted = int((batch['labels'][:, 1:] != -100).sum())
    assert int(sums['count']) == predicted
    masked = factory is tiny_data.char_text_masked
    assert predicted == 6 * (tiny_data.WINDOW - (tiny_data.PROMPT_LENGTH if masked else 1))
    assert sums['loss'].item() / predicted == pytest.approx(hf_mean, rel=1e-5)
    assert 0 <= int(sums['correct']) <= predicted
    # Sums, not means: two halves add up to the whole.
    with torch.no_grad():
        halves = [token_cross_entropy(model, batch_of(dataset, rows)) for rows in (range(2), range(2, 6))]
    assert sum(h['loss'].item() for h in halves) == pytest.approx(sums['loss'].item(), rel=1e-5)
    assert sum(int(h['count']) for h in halves) == predicted
    assert sum(int(h['correct']) for h in halves) == int(sums['correct'])


def test_token_cross_entropy_accuracy_counts_top1_hits():
    """A model whose logits always favour the id of 'e': correct = how many targets are 'e'."""
    e_id = int(tiny_data.encode('e')[0])

    class AlwaysE(torch.nn.Module):
        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, tiny_data.VOCAB_SIZE)
            logits[..., e_id] = 1.0
            return type('Output', (), {'logits': logits})()

    batch = batch_of(tiny_data.char_text_masked(None, True), range(4))
    sums = token_cross_entropy(AlwaysE(), batch)
    targets = batch['labels'][:, 1:]
    assert int(sums['correct']) == int((targets == e_id).sum())
    # A position costs log(V - 1 + e), less 1 where the target is 'e'.
    expected = math.log(tiny_data.VOCAB_SIZE - 1 + math.e) * int(sums['count']) - int(sums['correct'])
    assert int(sums['count']) == int((targets != -100).sum())
    assert sums['loss'].item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- (d) training

def test_a_few_training_steps_lower_the_loss(tmp_path):
    _, start, end = train(steps=25, seed=0)
    assert end < start - 0.5, (start, end)
    # The same seed trains the same model.
    first, _, _ = train(steps=3, seed=1)
    second, _, _ = train(steps=3, seed=1)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """The train command, run as a user would: (checkpoint path, its stdout)."""
    folder = tmp_path_factory.mktemp('tiny_lm')
    done = run_script('examples/tiny_lm/train.py', '--save', folder, '--steps', '20', '--threads', '1')
    assert done.returncode == 0, done.stderr
    return folder / 'model.t7', done.stdout


def test_train_command_writes_the_checkpoint(trained):
    path, stdout = trained
    assert 'train loss at start' in stdout and 'train loss after 20 steps' in stdout
    assert torch.load(path, weights_only=True)['step'] == 20
    start = float(stdout.split('train loss at start: ')[1].split()[0])
    reported = float(stdout.split('train loss after 20 steps: ')[1].split()[0])
    assert reported < start - 0.5
    assert dataset_loss(load_trained(path), tiny_data.char_text(None, True)) == pytest.approx(reported, abs=1e-4)


# ----------------------------------------------------------------------------- (e) end to end

def surface_run(tmp_path, model_file, *args):
    """plot_surface.py on a 3x3 grid; batches of 96 windows leave a short last batch (256 = 96 + 96 + 64),
    so a mean of batch means would differ from the mean over all tokens."""
    done = run_script('plot_surface.py', '--model', 'examples.tiny_lm.model:tiny_gpt',
                      '--dataset', 'examples.tiny_lm.data:char_text', '--datapath', tmp_path,
                      '--model_file', model_file, '--x=-1:1:3', '--y=-1:1:3', '--batch_size', '96',
                      '--threads', '1', *args)
    assert done.returncode == 0, done.stderr
    return done


def test_surface_with_causal_lm_and_a_custom_objective(tmp_path, trained):
    trained_model = trained[0]
    surf_lm, surf_custom = tmp_path / 'causal_lm.h5', tmp_path / 'custom.h5'
    surface_run(tmp_path, trained_model, '--loss_name', 'causal_lm', '--include_params', BLOCK, *DIRECTIONS,
                '--surf_file', surf_lm)
    lm = hdf5_layout.read_surface(str(surf_lm))
    loss, perplexity = lm.values['train_loss'], lm.values['train_perplexity']
    assert loss.shape == perplexity.shape == (3, 3)
    assert lm.done['train_loss'].all() and lm.done['train_perplexity'].all()
    np.testing.assert_allclose(perplexity, np.exp(loss), rtol=1e-6)

    # The centre is the trained model: the mean over all predicted tokens of the training set.
    model = load_trained(trained_model)
    dataset = tiny_data.char_text(None, True)
    expected_loss, expected_acc = independent_mean_and_accuracy(model, dataset)
    assert loss[1, 1] == pytest.approx(expected_loss, rel=1e-5)
    assert np.isfinite(loss).all() and (loss != loss[1, 1]).sum() >= 8    # the directions move it

    # Directions only in the second block, and there only in weight matrices (biasbn).
    xdir, ydir, _ = hdf5_layout.read_direction_file(lm.dir_file)
    names = [name for name, _ in model.named_parameters()]
    included = [name for name in names if fnmatch.fnmatch(name, BLOCK)]
    for direction in (xdir, ydir):
        if len(direction) == len(names):          # a tensor per parameter, zero outside the block
            by_name = dict(zip(names, direction))
        else:                                     # or a tensor per included parameter only
            assert len(direction) == len(included)
            by_name = dict(zip(included, direction))
        for name, tensor in by_name.items():
            moved = bool(np.any(np.asarray(tensor) != 0))
            param = dict(model.named_parameters())[name]
            assert moved == (name in included and param.dim() > 1), name

    # The custom objective along the same directions: the same surface, plus accuracy.
    surface_run(tmp_path, trained_model, '--loss_name', 'examples.tiny_lm.objectives:token_cross_entropy',
                '--dir_file', lm.dir_file, '--surf_file', surf_custom)
    custom = hdf5_layout.read_surface(str(surf_custom))
    assert custom.done['train_loss'].all() and custom.done['train_acc'].all()
    np.testing.assert_allclose(custom.values['train_loss'], loss, rtol=1e-5)
    acc = custom.values['train_acc']
    assert ((0 <= acc) & (acc <= 100)).all()
    assert acc[1, 1] == pytest.approx(expected_acc, abs=1e-6)


def test_worked_example_script_tiny(tmp_path):
    """examples/tiny_lm/run_example.sh as the README shows it, on a tiny budget: both surfaces and
    the plots."""
    out = tmp_path / 'out'
    env = {**os.environ, 'PY': sys.executable, 'PYTHONPATH': ROOT, 'STEPS': '5', 'GRID': '3', 'THREADS': '1'}
    done = subprocess.run(['bash', os.path.join(ROOT, 'examples', 'tiny_lm', 'run_example.sh'), str(out)],
                          check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert '+ ' in done.stdout and 'plot_2D.py' in done.stdout           # commands are printed
    lm = hdf5_layout.read_surface(str(out / 'surface_causal_lm.h5'))
    custom = hdf5_layout.read_surface(str(out / 'surface_token_cross_entropy.h5'))
    np.testing.assert_allclose(custom.values['train_loss'], lm.values['train_loss'], rtol=1e-5)
    assert any(name.startswith('surface_causal_lm.h5') and name.endswith('.png') for name in os.listdir(out))
