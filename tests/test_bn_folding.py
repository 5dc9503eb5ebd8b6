"""--fold_bn: BatchNorm folded into the convolution before it gives the same outputs as the model,
at every grid point, and leaves the model itself alone."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from losslandscape.compute import bn_folding
from losslandscape.compute.bn_folding import BatchNormFolding
from losslandscape.directions import moving, normalization, subsets
from losslandscape.errors import UsageError
from losslandscape.models.cifar10.zoo import build
from tests.conftest import ROOT
from tests.synthetic_weights import synthetic_state_dict
from tests.test_model_zoo import LAYOUTS


def randomize_statistics(net, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are mean 0, var 1, identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def outputs(model, x):
    with torch.inference_mode():
        return model(x)


class Shapes(nn.Module):
    """Every case the folding must tell apart."""

    def __init__(self):
        super().__init__()
        self.conv_bias = nn.Conv2d(3, 4, 3, padding=1, bias=True)       # conv with bias -> BN: folds
        self.bn_a = nn.BatchNorm2d(4)
        self.shared = nn.Conv2d(4, 4, 1, bias=False)                    # called twice, each call -> own BN: both fold
        self.bn_b, self.bn_c = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.reused = nn.Conv2d(4, 4, 3, padding=1, bias=False)         # output also used unnormalised: no fold
        self.bn_d = nn.BatchNorm2d(4)
        self.conv1d = nn.Conv1d(4, 4, 1)
        self.bn_plain = nn.BatchNorm1d(4, affine=False)                 # no gamma/beta: folds
        self.bn_batch = nn.BatchNorm2d(4, track_running_stats=False)    # batch statistics: no fold
        self.conv_e = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.bn_a(self.conv_bias(x)).relu()
        x = self.bn_c(self.shared(self.bn_b(self.shared(x))))
        r = self.reused(x)
        x = self.bn_d(r) + r
        x = self.bn_batch(self.conv_e(x))
        v = self.bn_plain(self.conv1d(x.mean(dim=3)))
        return v.flatten(1)


def test_folds_exactly_the_foldable_pairs_and_matches_the_model():
    net = randomize_statistics(Shapes())
    x = torch.randn(5, 3, 6, 6)
    before = copy.deepcopy(net.state_dict())
    folding = BatchNormFolding(net)
    assert folding.num_folded == 4   # bn_a, bn_b, bn_c, bn_plain
    folded_bn = {id(bn) for _, _, bn in folding.pairs}
    assert folded_bn == {id(net.bn_a), id(net.bn_b), id(net.bn_c), id(net.bn_plain)}
    torch.testing.assert_close(outputs(folding.module, x), outputs(net, x), rtol=1e-5, atol=1e-5)
    # The model is unchanged: same state, and it still runs its own BatchNorm layers.
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize('dir_type', subsets.DIR_TYPES)
def test_refresh_follows_the_model_to_every_grid_point(dir_type):
    """Without refresh() the folded weights would stay those of the first point."""
    net = randomize_statistics(Shapes())
    x = torch.randn(5, 3, 6, 6)
    folding = BatchNormFolding(net)
    base = subsets.get_base(net, dir_type)
    g = torch.Generator().manual_seed(1)
    xdir = normalization.make_random_direction(base, g, 'filter')
    ydir = normalization.make_random_direction(base, g, 'filter')
    for step in [(0.5, -0.25), (-1.0, 1.0)]:
        moving.move(net, dir_type, base, xdir, ydir, *step)
        stale = outputs(folding.module, x)
        folding.refresh()
        expected = outputs(net, x)
        assert not torch.allclose(stale, expected, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(outputs(folding.module, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ['resnet20', 'resnet20_noshort', 'resnet50', 'vgg9', 'wrn56_2', 'densenet121'])
def test_zoo_models_fold_to_the_same_logits(name):
    net = build(name)
    net.load_state_dict(synthetic_state_dict(LAYOUTS[name]['state_dict']))
    randomize_statistics(net)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = outputs(net, x)
    folding = BatchNormFolding(net)
    num_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    if name.startswith('densenet'):
        assert 0 < folding.num_folded < num_bn   # pre-activation blocks: BN before the convolution stays
    else:
        assert folding.num_folded == num_bn
    got = outputs(folding.module, x)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_channels_last_model_folds_in_its_layout():
    net = randomize_statistics(build('resnet20')).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    folding = BatchNormFolding(net)
    for folded, conv, _ in folding.pairs:
        assert folded.weight.is_contiguous(memory_format=torch.channels_last) == \
            conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outputs(folding.module, x), outputs(net, x), rtol=1e-4, atol=1e-4)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x):
        if x.sum() > 0:            # control flow on values: torch.fx cannot trace it
            return self.bn(self.conv(x))
        return x


def test_untraceable_model_is_a_usage_error():
    with pytest.raises(UsageError, match='--fold_bn: torch.fx cannot trace'):
        BatchNormFolding(DataDependent())


@pytest.mark.parametrize('name', ['resnet20', 'resnet20_noshort', 'vgg9', 'wrn56_2'])
def test_fused_convolutions_give_the_unfused_folded_values_exactly(name):
    """On the CPU each convolution -> ReLU and convolution -> addition -> ReLU becomes one oneDNN call
    (channels_last): float32 values equal the unfused folded model's bit for bit; under bf16
    autocast they stay close to float32."""
    if not bn_folding.fusion_available():
        pytest.skip('this PyTorch has no oneDNN fused convolution')
    net = build(name)
    net.load_state_dict(synthetic_state_dict(LAYOUTS[name]['state_dict']))
    net = randomize_statistics(net).to(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    fused, unfused = BatchNormFolding(net), BatchNormFolding(net, fuse=False)
    relus = sum(bn_folding._is_relu(node, unfused.module) for node in unfused.module.graph.nodes)
    assert unfused.num_fused == 0 and 0 < fused.num_fused <= relus
    assert sum(isinstance(m, bn_folding.FusedConv) for m in fused.module.modules()) == fused.num_fused
    assert torch.equal(outputs(fused.module, x), outputs(unfused.module, x))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = outputs(fused.module, x).float()
    reference = outputs(unfused.module, x)
    assert (low - reference).abs().max() <= 5e-2 * reference.abs().max()


class ShortcutReadLater(nn.Module):
    """Residual additions whose shortcut may not be overwritten: one is read again after the
    block, one is the model's input itself, one has a view taken before the block and read after
    it; the third block's may be."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d, self.e, self.f = (nn.Conv2d(3, 3, 3, padding=1) for _ in range(6))

    def forward(self, x):
        first = (self.a(x) + x).relu()           # shortcut: the caller's input
        s = self.b(first)
        second = (self.c(first) + s).relu()      # shortcut s is read again below
        third = (self.d(second) + first).relu()  # shortcut first: nothing reads it afterwards
        t = self.e(third)
        part = t[:, :1]                          # a view of t ...
        fourth = (self.f(third) + t).relu()      # ... so t is read after this block, through it
        return fourth + s + part


def _in_place_calls(model, x, autocast=False):
    """{fused call: whether its result sat in its shortcut's memory} over one forward pass."""
    seen, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, bn_folding.FusedConv):
            hooks.append(m.register_forward_hook(
                lambda mod, args, out, name=name: seen.__setitem__(name, len(args) == 2 and out.data_ptr() == args[1].data_ptr()),
            ))
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        result = outputs(model, x)
    for h in hooks:
        h.remove()
    return seen, result


@pytest.mark.parametrize('autocast', [False, True])
def test_residual_sums_land_in_the_dead_shortcut_and_change_no_value(autocast):
    """resnet20's nine residual additions write into their shortcut tensors (no output buffer), and
    the values are those of the unfused model, bit for bit in float32."""
    if not bn_folding.fusion_available():
        pytest.skip('this PyTorch has no oneDNN fused convolution')
    if autocast and not bn_folding.onednn_bf16():
        pytest.skip('oneDNN has no bfloat16 convolution on this CPU: FusedConv runs unfused (tested below)')
    net = randomize_statistics(build('resnet20')).to(memory_format=torch.channels_last)
    fused, unfused = BatchNormFolding(net), BatchNormFolding(net, fuse=False)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    seen, result = _in_place_calls(fused.module, x, autocast)
    assert fused.num_in_place == 9 == sum(seen.values())
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        reference = outputs(unfused.module, x)
    if autocast:
        assert (result.float() - reference.float()).abs().max() <= 5e-2 * reference.float().abs().max()
    else:
        assert torch.equal(result, reference)


WITHOUT_BF16 = """
import torch
from losslandscape.compute import bn_folding
from losslandscape.models.cifar10.zoo import build
from tests.test_bn_folding import outputs, randomize_statistics
assert not bn_folding.onednn_bf16()
net = randomize_statistics(build('resnet20')).to(memory_format=torch.channels_last)
fused, unfused = bn_folding.BatchNormFolding(net), bn_folding.BatchNormFolding(net, fuse=False)
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
with torch.autocast('cpu', dtype=torch.bfloat16):
    assert torch.equal(outputs(fused.module, x), outputs(unfused.module, x))
assert torch.equal(outputs(fused.module, x), outputs(unfused.module, x))
print('ok', fused.num_in_place)
"""


def test_without_onednn_bf16_autocast_runs_the_fused_calls_unfused():
    """Where oneDNN has no bfloat16 convolution (an AVX2 CPU; here oneDNN limited to AVX2) its fused
    call raises: FusedConv then runs the operations one by one and gives the unfused model's values."""
    if not bn_folding.fusion_available():
        pytest.skip('this PyTorch has no oneDNN fused convolution')
    env = {**os.environ, 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'MKL_ENABLE_INSTRUCTIONS': 'AVX2', 'PYTHONPATH': ROOT,
           'OMP_NUM_THREADS': '1'}
    done = subprocess.run([sys.executable, '-c', WITHOUT_BF16], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['ok', '9']


def test_a_shortcut_read_later_or_given_by_the_caller_is_not_overwritten():
    if not bn_folding.fusion_available():
        pytest.skip('this PyTorch has no oneDNN fused convolution')
    net = ShortcutReadLater().eval().to(memory_format=torch.channels_last)
    fused = BatchNormFolding(net)
    assert fused.num_fused == 4 and fused.num_in_place == 1
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    kept = x.clone()
    seen, result = _in_place_calls(fused.module, x)
    assert sorted(name for name, wrote in seen.items() if wrote) == ['fused_d']
    assert torch.equal(x, kept)
    assert torch.equal(result, outputs(BatchNormFolding(net, fuse=False).module, x))


def test_fused_convolutions_follow_the_model_and_fall_back_off_the_fast_path():
    """FusedConv reads the convolution's weights at every call (no refresh of its own), and computes
    the same thing unfused where oneDNN cannot fuse (NCHW tensors)."""
    net = randomize_statistics(build('resnet20'))
    folding = BatchNormFolding(net)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = subsets.get_base(net, 'weights')
    direction = normalization.make_random_direction(base, torch.Generator().manual_seed(2), 'filter')
    moving.move(net, 'weights', base, direction, None, 0.5)
    folding.refresh()
    torch.testing.assert_close(outputs(folding.module, x), outputs(net, x), rtol=1e-4, atol=1e-4)   # NCHW: unfused path
    net.to(memory_format=torch.channels_last)
    folding.module.to(memory_format=torch.channels_last)
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outputs(folding.module, cl), outputs(net, cl), rtol=1e-4, atol=1e-4)  # fused path


def _post_op_calls(model, x, autocast=False):
    """(the model's output, how many fused calls took oneDNN's ReLU post-op, how many applied
    PyTorch's ReLU after the fused convolution) over one forward pass."""
    counts = {True: 0, False: 0}
    real = bn_folding.FusedConv._pre_activation_is_finite

    def counting(self, x, other):
        finite = real(self, x, other)
        counts[finite] += 1
        return finite
    bn_folding.FusedConv._pre_activation_is_finite = counting
    try:
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            result = outputs(model, x)
    finally:
        bn_folding.FusedConv._pre_activation_is_finite = real
    return result, counts[True], counts[False]


def _far_resnet(scale):
    """A channels_last resnet20 with randomized statistics, its convolution weights times ``scale``
    (a far grid point), with its fused and unfused folded views."""
    net = randomize_statistics(build('resnet20'))
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(scale)
    net = net.to(memory_format=torch.channels_last)
    return BatchNormFolding(net), BatchNormFolding(net, fuse=False)


def _same_values_and_nans(a, b):
    assert torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(torch.isinf(a), torch.isinf(b))
    finite = torch.isfinite(a)
    assert torch.equal(a[finite], b[finite])


@pytest.mark.parametrize('autocast', [False, True], ids=['float32', 'bf16 autocast'])
def test_an_overflow_inside_fused_calls_stays_nan_as_in_the_unfused_model(autocast):
    """Far from the centre the activations overflow; an inf then meets -inf in the next
    convolution. oneDNN's ReLU post-op would turn that NaN into 0 and the network would go on to
    finite logits: the fused model must give NaN exactly where the unfused folded one does, and
    the same values elsewhere."""
    if not bn_folding.fusion_available() or (autocast and not bn_folding.onednn_bf16()):
        pytest.skip('this PyTorch or CPU has no oneDNN fused convolution for this dtype')
    fused, unfused = _far_resnet(1e4)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    result, with_post_op, after = _post_op_calls(fused.module, x, autocast)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        reference = outputs(unfused.module, x)
    assert torch.isnan(reference).any()   # the case is real: this point diverged
    assert after > 0                      # and the guard saw it coming
    _same_values_and_nans(result, reference)


def test_a_nan_input_reaches_the_output_of_the_fused_model():
    if not bn_folding.fusion_available():
        pytest.skip('this PyTorch has no oneDNN fused convolution')
    fused, unfused = _far_resnet(1.0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    x[1, 0, 5, 5] = float('nan')
    result, _, _ = _post_op_calls(fused.module, x)
    assert torch.isnan(result[1]).all() and torch.isfinite(result[[0, 2, 3]]).all()
    _same_values_and_nans(result, outputs(unfused.module, x))


def test_at_ordinary_points_every_fused_call_keeps_its_relu_post_op_and_reads_only_the_input():
    """The guard costs next to nothing where nothing diverges: bounds pass from call to call (and
    through the shortcut convolutions), so only the network's input is measured."""
    if not bn_folding.fusion_available():
        pytest.skip('this PyTorch has no oneDNN fused convolution')
    fused, unfused = _far_resnet(1.0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    measured, real = [], bn_folding._magnitude

    def spying(tensor, source):
        if source is None or not source.bound() < bn_folding.SAFE_MAGNITUDE:
            measured.append(tuple(tensor.shape))
        return real(tensor, source)
    bn_folding._magnitude = spying
    try:
        result, with_post_op, after = _post_op_calls(fused.module, x)
    finally:
        bn_folding._magnitude = real
    assert (with_post_op, after) == (fused.num_fused, 0)
    assert measured == [tuple(x.shape)]
    assert torch.equal(result, outputs(unfused.module, x))


class ChangedBetweenCalls(nn.Module):
    """A fused call's output changed in place before the next fused call reads it: its bound from
    the first call no longer holds, so the second must measure its input."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        h = self.a(x).relu()
        h.mul_(3e38)              # overflows to inf wherever h > 1
        return self.b(h).relu()   # inf against -inf weights: NaN


def test_a_tensor_changed_between_fused_calls_is_measured_not_bounded():
    if not bn_folding.fusion_available():
        pytest.skip('this PyTorch has no oneDNN fused convolution')
    torch.manual_seed(0)
    net = ChangedBetweenCalls().eval().to(memory_format=torch.channels_last)
    fused = BatchNormFolding(net)
    assert fused.num_fused == 2
    assert all(m.input_from is None for m in fused.module.modules() if isinstance(m, bn_folding.FusedConv))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    result, _, after = _post_op_calls(fused.module, x)
    reference = outputs(net, x)
    assert after == 1 and torch.isnan(reference).any()
    _same_values_and_nans(result, reference)
