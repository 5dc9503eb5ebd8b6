"""Hugging Face checkpoints without code, and curvature through their default attention.

Tiny GPT-2 and BERT models built from configs under a fixed seed (tests/fixtures/tiny_transformers.py)
are saved as a torch.save'd state_dict, a .safetensors state_dict, and save_pretrained folders
(one file, and sharded); each gives the same surface, a folder without --model and with the
objective its architecture calls for. Hessian eigenvalues through the default attention (sdpa)
equal those through eager attention, or a dense Hessian; a model whose products are impossible,
and every bad checkpoint, is one line, exit 2, nothing written.
"""
import importlib
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

pytest.importorskip('transformers', reason="transformers is not installed (pip install -e '.[test]')")
pytest.importorskip('safetensors', reason="safetensors is not installed (pip install -e '.[test]')")

import losslandscape  # noqa: E402
from losslandscape import hessian_spectrum, plot_hessian_eigen, plot_surface  # noqa: E402
from losslandscape.curvature import hessian  # noqa: E402
from losslandscape.engine.grid import Grid, parse_axis  # noqa: E402
from losslandscape.engine.surface_engine import run_grid  # noqa: E402
from losslandscape.io import hdf5_layout, surface_store  # noqa: E402
from losslandscape.models import loading  # noqa: E402
from losslandscape.parallel.mpi_comm import SerialComm  # noqa: E402
from tests.conftest import assert_one_line_error, call_main, snapshot  # noqa: E402
from tests.fixtures import tiny_transformers as tiny  # noqa: E402

PKG = 'tests.fixtures.tiny_transformers'
TOKENS = ['--dataset', f'{PKG}:token_sequences', '--threads', '1']
LINE = ['--x=-1:1:3', '--xnorm', 'filter', '--xignore', 'biasbn']


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """{name: path}: the tiny GPT-2 as gpt.t7 (torch.save'd state_dict), gpt.safetensors
    (safetensors' save_model, which keeps one name of the tied embedding), the folders gpt and
    gpt_sharded (save_pretrained, the second in several shards with an index), and the BERT
    folders bert_classifier and bert_masked_lm."""
    from safetensors.torch import save_model
    folder = tmp_path_factory.mktemp('huggingface')
    gpt = tiny.tiny_gpt()
    torch.save(gpt.state_dict(), folder / 'gpt.t7')
    save_model(gpt, str(folder / 'gpt.safetensors'))
    gpt.save_pretrained(folder / 'gpt')
    gpt.save_pretrained(folder / 'gpt_sharded', max_shard_size='20KB')
    tiny.tiny_bert_classifier().save_pretrained(folder / 'bert_classifier')
    tiny.tiny_bert_masked_lm().save_pretrained(folder / 'bert_masked_lm')
    assert len([f for f in os.listdir(folder / 'gpt_sharded') if f.endswith('.safetensors')]) > 1
    return {name: str(folder / name) for name in
            ('gpt.t7', 'gpt.safetensors', 'gpt', 'gpt_sharded', 'bert_classifier', 'bert_masked_lm')}


def surface_of(path):
    return hdf5_layout.read_surface(str(path))


def recorded_args(path):
    with h5py.File(path, 'r') as f:
        return json.loads(f.attrs[hdf5_layout.ARGS_ATTR])


def whole_batch(dataset):
    return torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])


# ----------------------------------------------------------------------------- loading

def test_safetensors_and_folders_give_the_factory_checkpoints_surface(saved, tmp_path):
    factory = ['--model', f'{PKG}:tiny_gpt', '--loss_name', 'causal_lm']
    runs = {'t7': [*factory, '--model_file', saved['gpt.t7']],
            'safetensors': [*factory, '--model_file', saved['gpt.safetensors']],
            'folder': ['--model_file', saved['gpt']],                  # no --model, no --loss_name
            'sharded': ['--model_file', saved['gpt_sharded'] + os.sep],
            'factory and folder': [*factory, '--model_file', saved['gpt']]}
    values = {}
    for name, argv in runs.items():
        surf_file = tmp_path / f'{name}.h5'
        plot_surface.main([*TOKENS, *LINE, *argv, '--surf_file', str(surf_file)])
        values[name] = surface_of(surf_file).values
    for name in runs:
        assert set(values[name]) == {'train_loss', 'train_perplexity', 'train_loss_stderr', 'train_perplexity_stderr',
                                     'train_loss_rise', 'train_loss_rise_stderr'}, name
        np.testing.assert_array_equal(values[name]['train_loss'], values['t7']['train_loss'], err_msg=name)
    # The folder's run chose its objective; the names were recorded resolved.
    args = recorded_args(tmp_path / 'folder.h5')
    assert args['model'] is None and args['loss_name'] == 'causal_lm'
    assert args['model_file'] == saved['gpt']
    with h5py.File(tmp_path / 'sharded.h5', 'r') as f:    # the identity: the folder's real path
        assert json.loads(f.attrs['model_file']) == os.path.realpath(saved['gpt_sharded'])
    # No file inside the checkpoint folders (a trailing separator would have put one there).
    assert not any(f.endswith('.h5') for f in os.listdir(saved['gpt_sharded']))
    # The centre's value, straight from the logits: mean cross-entropy of every next token.
    data = tiny.token_sequences()
    with torch.no_grad():
        logits = tiny.tiny_gpt()(input_ids=whole_batch(data)['input_ids']).logits[:, :-1].double()
    targets = whole_batch(data)['labels'][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, tiny.VOCAB), targets.reshape(-1)).item()
    assert values['folder']['train_loss'][1] == pytest.approx(expected, rel=1e-6)


def test_a_folders_model_keeps_default_attention_and_its_saved_dtype(saved, tmp_path):
    net = loading.load(None, None, saved['gpt'])
    assert net.config._attn_implementation == 'sdpa' and not net.training
    assert next(net.parameters()).dtype == torch.float32
    tiny.tiny_gpt().to(torch.bfloat16).save_pretrained(tmp_path / 'bf16')
    assert next(loading.load(None, None, str(tmp_path / 'bf16')).parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize('folder,dataset', [('bert_classifier', 'labelled_sequences'),
                                            ('bert_masked_lm', 'masked_sequences')])
def test_other_architectures_are_evaluated_by_their_own_loss(saved, tmp_path, folder, dataset):
    surf_file = tmp_path / 'centre.h5'
    plot_surface.main(['--dataset', f'{PKG}:{dataset}', '--threads', '1', '--model_file', saved[folder],
                       '--x=0:0:1', '--surf_file', str(surf_file)])
    assert recorded_args(surf_file)['loss_name'] == 'model'
    # One batch of every sequence: the model's own mean (over its labels other than -100).
    builder = tiny.tiny_bert_classifier if folder == 'bert_classifier' else tiny.tiny_bert_masked_lm
    with torch.no_grad():
        expected = builder()(**whole_batch(getattr(tiny, dataset)())).loss.item()
    assert surface_of(surf_file).values['train_loss'][0] == pytest.approx(expected, rel=1e-6)


def test_an_explicit_loss_name_overrides_the_architectures(saved, tmp_path):
    surf_file = tmp_path / 'model_loss.h5'
    plot_surface.main([*TOKENS, '--model_file', saved['gpt'], '--loss_name', 'model', '--x=0:0:1',
                       '--surf_file', str(surf_file)])
    assert recorded_args(surf_file)['loss_name'] == 'model'
    kept = {n for n in surface_of(surf_file).values if not n.endswith(('_stderr', '_rise'))}
    assert kept == {'train_loss'}    # causal_lm would add the perplexity


def test_runs_without_loss_name_record_crossentropy_as_before(tmp_path, checkpoints):
    """A surface made with --loss_name crossentropy given resumes without it: the default is
    recorded resolved, in the arguments and the identity."""
    shutil.copy(checkpoints['mlp'], tmp_path / 'mlp.t7')
    common = ['--dataset', 'digits', '--threads', '1', '--model', 'mlp', '--model_file', str(tmp_path / 'mlp.t7'),
              '--x=-1:1:3', '--data_split', '8', '--surf_file', str(tmp_path / 'surface.h5')]
    plot_surface.main([*common, '--loss_name', 'crossentropy'])
    with h5py.File(tmp_path / 'surface.h5', 'r+') as f:
        assert json.loads(f.attrs['loss_name']) == 'crossentropy'
        f['train_loss'][1] = -7.0        # a stored value a rerun must keep, not recompute
    plot_surface.main(common)
    assert surface_of(tmp_path / 'surface.h5').values['train_loss'][1] == -7.0
    assert recorded_args(tmp_path / 'surface.h5')['loss_name'] == 'crossentropy'


# ----------------------------------------------------------------------------- curvature through attention

def test_hessian_eigenvalues_through_default_attention_equal_eager_attentions(saved, tmp_path):
    surf_file = tmp_path / 'hessian.h5'
    plot_hessian_eigen.main([*TOKENS, '--model_file', saved['gpt'], '--x=-0.5:0.5:2', '--xnorm', 'filter',
                             '--xignore', 'biasbn', '--eig_solver', 'cold', '--surf_file', str(surf_file)])
    sdpa = surface_of(surf_file)
    from transformers import GPT2LMHeadModel
    eager = GPT2LMHeadModel.from_pretrained(saved['gpt'], attn_implementation='eager')
    assert eager.config._attn_implementation == 'eager'
    reference = losslandscape.hessian_eigen(eager, tiny.token_sequences(), x='-0.5:0.5:2', dir_file=sdpa.dir_file,
                                            loss_name='causal_lm', eig_solver='cold', threads=1,
                                            surf_file=str(tmp_path / 'eager.h5'))
    for name in ('max_eig', 'min_eig'):
        assert np.all(np.abs(sdpa.values[name]) > 1e-3), name
        np.testing.assert_allclose(sdpa.values[name], reference.values[name], rtol=1e-5, err_msg=name)


def test_bert_top_eigenvalue_through_default_attention_equals_a_dense_eager_hessian(saved, tmp_path):
    block = 'bert.encoder.layer.0.attention.*'
    spectrum_file = tmp_path / 'spectrum.h5'
    hessian_spectrum.main(['--dataset', f'{PKG}:labelled_sequences', '--threads', '1', '--model_file',
                           saved['bert_classifier'], '--include_params', block, '--top_k', '1', '--eig_tol', '1e-7',
                           '--batch_size', '4', '--spectrum_file', str(spectrum_file)])
    data, attrs = hdf5_layout.read_spectrum_file(str(spectrum_file))
    assert attrs['loss_name'] == 'model'
    # Dense: the eager model's mean loss over the whole data set as a function of the block's weights.
    from torch.func import functional_call
    model = tiny.tiny_bert_classifier(attn_implementation='eager')
    names = [n for n, p in model.named_parameters()
             if n.startswith('bert.encoder.layer.0.attention.') and p.dim() > 1]
    shapes = [model.get_parameter(n).shape for n in names]
    batch = whole_batch(tiny.labelled_sequences())

    def mean_loss(flat):
        pieces, start = {}, 0
        for name, shape in zip(names, shapes):
            pieces[name] = flat[start:start + shape.numel()].reshape(shape)
            start += shape.numel()
        return functional_call(model, pieces, (), batch).loss

    flat = torch.cat([model.get_parameter(n).detach().reshape(-1) for n in names]).double()
    model.double()
    dense = torch.autograd.functional.hessian(mean_loss, flat)
    assert attrs['num_params'] == flat.numel()
    top = torch.linalg.eigvalsh(dense)[-1].item()
    assert data[hdf5_layout.EIGENVALUES][0] == pytest.approx(top, rel=1e-5)


def _recording_attention(monkeypatch):
    """Every call of scaled_dot_product_attention notes whether its fused kernels were allowed."""
    allowed = []
    original = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        allowed.append(torch.backends.cuda.flash_sdp_enabled())
        return original(*args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention', recording)
    return allowed


class _Batches:
    def __init__(self, batches):
        self.list = batches

    def batches(self):
        return iter(self.list)


def test_products_take_the_math_kernel_and_evaluation_the_fast_ones(saved, monkeypatch, tmp_path):
    net = loading.load(None, None, saved['gpt'])
    batch = whole_batch(tiny.token_sequences())
    params = hessian.hessian_parameters(net)
    # The problem: through the fused kernel a product is impossible.
    with torch.enable_grad():
        grads = torch.autograd.grad(net(**batch).loss, params, create_graph=True)
        with pytest.raises(RuntimeError, match='scaled_dot_product'):
            torch.autograd.grad(grads, params, grad_outputs=[torch.ones_like(g) for g in grads])
    allowed = _recording_attention(monkeypatch)
    operator = hessian.MeanLossHessian(net, _Batches([batch]), 'causal_lm', params=params)
    vectors = np.random.default_rng(0).standard_normal((2, operator.size))
    single = operator.hvp(vectors[0])
    block = operator.hvp_block(vectors)
    assert allowed and not any(allowed)           # every product's attention: the math kernel
    np.testing.assert_allclose(block[0], single, rtol=1e-4, atol=1e-6 * np.abs(single).max())
    assert torch.backends.cuda.flash_sdp_enabled()   # and the fused kernels back once they are done
    allowed.clear()
    losslandscape.surface(net, tiny.token_sequences(), x='-1:1:2', loss_name='causal_lm', threads=1,
                          surf_file=str(tmp_path / 'surface.h5'))
    assert allowed and all(allowed)               # the grid's evaluation keeps the fast kernels


# ----------------------------------------------------------------------------- failures write nothing

@pytest.mark.parametrize('module', ['plot_hessian_eigen', 'losslandscape.hessian_spectrum', 'losslandscape.sharpness'])
def test_a_model_without_second_derivatives_is_refused_before_any_file(tmp_path, monkeypatch, capsys, module):
    monkeypatch.chdir(tmp_path)    # where the files of a model without --model_file would go
    argv = ['--dataset', f'{PKG}:labelled_sequences', '--threads', '1', '--model', f'{PKG}:no_second_derivative',
            '--loss_name', 'model', '--batch_size', '4']
    if module == 'plot_hessian_eigen':
        argv += ['--x=-1:1:3']
    code, err = call_main(importlib.import_module(module).main, argv, capsys)
    assert_one_line_error(code, err, ['Hessian-vector products cannot be taken', 'square_backward'])
    assert snapshot(tmp_path) == {}


def test_a_new_surface_file_that_fails_before_its_first_point_is_removed(tmp_path):
    grid = Grid(parse_axis('-1:1:3', '--x'), None)
    path = str(tmp_path / 'surface.h5')

    def open_writer():
        return surface_store.SurfaceWriter(path, grid, 'directions.h5', ['train_loss'], {'model': 'm'}, {})

    def failing_after(good_points):
        def evaluate(points):
            if points[0][0] >= good_points:
                raise RuntimeError('the model broke')
            return [{'train_loss': 1.0} for _ in points]
        return evaluate

    with pytest.raises(RuntimeError, match='the model broke'):
        run_grid(SerialComm(), grid, open_writer, failing_after(0))
    assert not os.path.exists(path)
    # A file with a point is a partial result to resume: it stays, and a later failure keeps it.
    with pytest.raises(RuntimeError):
        run_grid(SerialComm(), grid, open_writer, failing_after(1))
    assert surface_of(path).done['train_loss'].tolist() == [True, False, False]
    with pytest.raises(RuntimeError):
        run_grid(SerialComm(), grid, open_writer, failing_after(0))
    assert surface_of(path).done['train_loss'].tolist() == [True, False, False]


@pytest.fixture(scope='module')
def bad(saved, tmp_path_factory):
    """Broken copies of the saved checkpoints, one per way a checkpoint can be wrong."""
    folder = tmp_path_factory.mktemp('bad_checkpoints')

    def copy(name, source):
        shutil.copytree(saved[source], folder / name)
        return folder / name

    os.remove(copy('no_config', 'gpt') / 'config.json')
    shards = sorted(f for f in os.listdir(saved['gpt_sharded']) if f.endswith('.safetensors'))
    os.remove(copy('missing_shard', 'gpt_sharded') / shards[-1])
    for name, key, value in (('wider', 'n_embd', 32), ('unknown_architecture', 'architectures', ['GPT9LMHeadModel'])):
        config_path = copy(name, 'gpt') / 'config.json'
        config = json.loads(config_path.read_text())
        config[key] = value
        config_path.write_text(json.dumps(config))
    weights = (copy('truncated', 'gpt') / 'model.safetensors')
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    whole = open(saved['gpt.safetensors'], 'rb').read()
    (folder / 'truncated.safetensors').write_bytes(whole[:len(whole) // 2])
    return folder, shards[-1]


BAD_CASES = [('no_config', ['config.json']), ('missing_shard', ['shard', 'missing']),
             ('wider', ['does not fit', 'GPT2LMHeadModel', 'shape']),
             ('unknown_architecture', ['GPT9LMHeadModel', 'transformers']),
             ('truncated', ['model.safetensors', 'not a readable safetensors file']),
             ('truncated.safetensors', ['not a readable safetensors file'])]
BAD_SCRIPTS = ['plot_surface', 'plot_hessian_eigen', 'losslandscape.hessian_spectrum', 'losslandscape.sharpness']


@pytest.mark.parametrize('module', BAD_SCRIPTS)
@pytest.mark.parametrize('case,words', BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_checkpoints_are_one_line_and_write_nothing(bad, tmp_path, monkeypatch, capsys, module, case, words):
    folder, missing_shard = bad
    monkeypatch.chdir(tmp_path)
    argv = [*TOKENS, '--model_file', str(folder / case)]
    if case.endswith('.safetensors'):
        argv += ['--model', f'{PKG}:tiny_gpt']      # a file of tensors needs its model
    if module.startswith('plot_'):
        argv += ['--x=-1:1:3']
    if case == 'missing_shard':
        words = [*words, missing_shard]
    before = snapshot(folder)
    code, err = call_main(importlib.import_module(module).main, argv, capsys)
    assert_one_line_error(code, err, [f"--model_file '{folder / case}'", *words])
    assert snapshot(folder) == before and snapshot(tmp_path) == {}


@pytest.mark.parametrize('case', ['truncated', 'truncated.safetensors', 'missing_shard'])
def test_bad_checkpoints_from_python_name_the_keyword(bad, tmp_path, case):
    folder, _ = bad
    with pytest.raises(losslandscape.UsageError, match=f"^model_file='{folder / case}'"):
        losslandscape.surface(tiny.tiny_gpt(), tiny.token_sequences(), x='-1:1:3', model_file=str(folder / case),
                              surf_file=str(tmp_path / 'surface.h5'))
    assert snapshot(tmp_path) == {}


# ----------------------------------------------------------------------------- between folders, spread models

def test_interpolation_between_two_saved_folders_equals_an_independent_computation(saved, tmp_path, monkeypatch):
    """Two fine-tunes of one base as folders: the line between them is made tensor by tensor from
    the second folder (no second model is built), and its midpoint's loss is the loss of the
    averaged weights, computed here straight from the logits."""
    gpt_b = tiny.tiny_gpt()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(5)
        for p in gpt_b.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    gpt_b.save_pretrained(tmp_path / 'gpt_b')
    built = []
    real_load = loading.load
    monkeypatch.setattr(loading, 'load', lambda *a, **k: built.append(a[2]) or real_load(*a, **k))
    surf_file = tmp_path / 'line.h5'
    plot_surface.main([*TOKENS, '--model_file', saved['gpt'], '--model_file2', str(tmp_path / 'gpt_b'),
                       '--x=0:1:3', '--dir_mode', 'stream', '--surf_file', str(surf_file)])
    assert built == [saved['gpt']]   # the second folder was read, never built
    a, b = tiny.tiny_gpt(), gpt_b
    x, _, _ = hdf5_layout.read_direction_file(surface_of(surf_file).dir_file)
    for d, wa, wb in zip(x, a.parameters(), b.parameters()):
        np.testing.assert_array_equal(d, (wb.detach().double() - wa.detach().double()).float().numpy())
    middle = tiny.tiny_gpt()
    with torch.no_grad():
        for pm, pa, pb in zip(middle.parameters(), a.parameters(), b.parameters()):
            pm.copy_(pa + 0.5 * (pb.double() - pa.double()).float())
    data = whole_batch(tiny.token_sequences())
    with torch.no_grad():
        logits = middle(input_ids=data['input_ids']).logits[:, :-1].double()
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, tiny.VOCAB), data['labels'][:, 1:].reshape(-1))
    losses = surface_of(surf_file).values['train_loss']
    assert losses[1] == pytest.approx(expected.item(), rel=1e-5)
    assert losses[0] != losses[2]


def test_device_map_auto_spreads_the_model_and_gives_the_same_surface(saved, tmp_path, monkeypatch):
    """--device_map auto reaches from_pretrained (accelerate's placement); on a machine without
    GPUs every tensor lands on the CPU, and the surface is the one of the model loaded whole (the
    GPU case: benchmarks/gpu_check.sh)."""
    pytest.importorskip('accelerate')
    import transformers
    placements = []
    real = transformers.GPT2LMHeadModel.from_pretrained.__func__
    monkeypatch.setattr(transformers.GPT2LMHeadModel, 'from_pretrained', classmethod(
        lambda cls, *a, **k: placements.append(k.get('device_map')) or real(cls, *a, **k)))
    for name in ('whole', 'spread'):
        plot_surface.main([*TOKENS, *LINE, '--y=-1:1:2', '--model_file', saved['gpt'], '--dir_mode', 'stream',
                           '--surf_file', str(tmp_path / f'{name}.h5')] + (['--device_map', 'auto'] if name == 'spread' else []))
    assert placements == [None, 'auto']
    np.testing.assert_array_equal(surface_of(tmp_path / 'spread.h5').values['train_loss'],
                                  surface_of(tmp_path / 'whole.h5').values['train_loss'])


@pytest.mark.parametrize('extra, words', [
    (['--model', f'{PKG}:tiny_gpt', '--model_file', 'T7'], ['--device_map', 'FOLDER']),
    (['--model_file', 'FOLDER', '--compile'], ['--device_map', '--compile']),
])
def test_device_map_refuses_what_it_cannot_spread(saved, tmp_path, capsys, extra, words):
    extra = [saved['gpt.t7'] if a == 'T7' else saved['gpt'] if a == 'FOLDER' else a for a in extra]
    before = snapshot(tmp_path)
    code, err = call_main(plot_surface.main, [*TOKENS, *LINE, *extra, '--device_map', 'auto',
                                              '--surf_file', tmp_path / 's.h5'], capsys)
    assert_one_line_error(code, err, words)
    assert snapshot(tmp_path) == before
