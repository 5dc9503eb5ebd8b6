"""An inference view of a model in which each BatchNorm is folded into the convolution before it.

In eval mode a BatchNorm layer is a per-channel affine map, BN(z) = (z - mean) * s + beta with
s = gamma / sqrt(running_var + eps). After a convolution with weight W and bias b it gives

    BN(conv(x; W, b)) = conv(x; W * s, (b - mean) * s + beta)        (s broadcast over output channels)

so the pair costs one convolution instead of a convolution and a pass over its output. This is
exact in real arithmetic; in float32 the rounding differs from the unfolded model.

The grid moves the original model's parameters (and, with 'states' directions, its running
statistics) at every point, so the folded weights are recomputed from them by ``refresh()`` after
each move: a few elementwise products over the convolution weights, nothing per image. Every
other layer is shared with the original model, not copied.

On the CPU (oneDNN, channels_last tensors) each 2-D convolution whose output goes only to a ReLU, or only to an addition
whose result goes only to a ReLU (a residual block's end), is then fused with them into one oneDNN
call (``FusedConv``: ``relu(conv(x))``, ``relu(conv(x) + other)`` as post-ops of the convolution),
so the activation is not written out and read back for the ReLU and the addition. In float32 the
post-ops add and clamp the convolution's float32 output exactly as the separate operations do, so
the values are those of the folded model without fusion; under bf16 autocast (--amp) the addition
is made before the result is rounded to bf16. Elsewhere (GPUs, other dtypes) ``FusedConv`` runs the
same operations unfused.

Where the tensor added (a residual block's shortcut) is a convolution's output that no later
operation reads, and that only convolutions read before (another reader might have made a view of
it that lives on), the fused call writes its result into that tensor's memory (oneDNN's sum post-op,
``_convolution_pointwise_``) instead of into a new output: the same additions in the same order, so
the same bits, without an output to allocate and a second input stream to read. On resnet20 this
made a grid point 4-6 % faster in float32 and 4-12 % under --amp (benchmarks/RESULTS.md).

A diverged point must stay diverged. oneDNN's ReLU post-op maps NaN to 0 (PyTorch's ReLU keeps
it), so a NaN born inside a fused call -- an overflow to inf, then inf - inf in the next
convolution -- would vanish, and the network would go on to finite logits where the unfused model
gives NaN. A fused call therefore runs with the ReLU post-op only when its pre-activation is
certainly finite: |conv(x) + other| <= max|x| * max_o sum|W_o| + max|b| + max|other| (W_o: output
channel o's weights) stays far below float32's largest value (``SAFE_MAGNITUDE``), so nothing
overflows and there is no NaN to lose. Otherwise (a far grid point, a non-finite input or weight)
the call keeps the convolution and addition fused and applies PyTorch's ReLU after it: NaN and inf
then travel exactly as in the unfused model. The bound of an input another fused call produced is
that call's output bound, passed along the graph; other inputs are measured (one min/max
reduction). On resnet20 that is the network's input and the two downsampling blocks' inputs and
shortcuts, and the weight sums are computed once per grid point (when the weights change), so the
check costs next to nothing at the points that do not diverge.
"""
import functools
import math
import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from losslandscape.errors import UsageError

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FOLDED_PREFIX = 'folded_'
FUSED_PREFIX = 'fused_'
# The largest pre-activation bound a fused call takes with the ReLU post-op: 2**28 below float32's
# largest value, far beyond the accumulation's rounding (and any transform oneDNN's algorithms use).
SAFE_MAGNITUDE = 2.0 ** 100


class BatchNormFolding:
    """``module``: the model to call for inference (a torch.fx GraphModule sharing every layer of
    ``net`` except the folded convolutions). ``refresh()``: recompute the folded weights from
    ``net``'s current state. ``num_folded``: how many Conv -> BatchNorm pairs were folded;
    ``num_fused``: how many convolutions were then fused with the ReLU (and addition) after them
    (``fuse``: whether to fuse at all); ``num_in_place``: how many of the additions write into the
    shortcut tensor's own memory."""

    def __init__(self, net, fuse=True):
        net.eval()   # trace the inference path: code that branches on self.training takes its eval branch
        try:
            self.module = torch.fx.symbolic_trace(net)
        except Exception as err:  # fx raises many types for code it cannot trace; all mean "cannot fold"
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UsageError(f'--fold_bn: torch.fx cannot trace this model ({first}); run without --fold_bn') from None
        self.pairs = []   # (folded convolution, original convolution, original BatchNorm)
        graph = self.module.graph
        for node in list(graph.nodes):
            conv_node = self._foldable_conv(node)
            if conv_node is None:
                continue
            conv, bn = self.module.get_submodule(conv_node.target), self.module.get_submodule(node.target)
            folded = _conv_with_bias_like(conv)
            name = FOLDED_PREFIX + conv_node.name   # per call: a convolution module may be called twice
            self.module.add_submodule(name, folded)
            conv_node.target = name
            node.replace_all_uses_with(conv_node)
            graph.erase_node(node)
            self.pairs.append((folded, conv, bn))
        self.num_folded = len(self.pairs)
        self.num_fused = _fuse_activations(self.module) if fuse and fusion_available() else 0
        self.num_in_place = _sum_into_dead_shortcuts(self.module) if self.num_fused else 0
        _link_bounds(self.module)
        graph.lint()
        self.module.recompile()
        self.refresh()

    def _foldable_conv(self, node):
        """The convolution node feeding BatchNorm ``node``, when the pair can be folded, else None."""
        if node.op != 'call_module' or len(node.args) != 1 or node.kwargs:
            return None
        bn = self.module.get_submodule(node.target)
        source = node.args[0]
        if not isinstance(bn, BATCHNORMS) or not bn.track_running_stats or bn.running_mean is None:
            return None   # without running statistics BatchNorm normalises each batch by itself
        if not isinstance(source, torch.fx.Node) or source.op != 'call_module' or len(source.users) != 1:
            return None   # the convolution's output is also used elsewhere, unnormalised
        conv = self.module.get_submodule(source.target)
        if type(conv) not in CONVOLUTIONS or conv.out_channels != bn.num_features:
            return None
        return source

    @torch.no_grad()
    def refresh(self):
        for folded, conv, bn in self.pairs:
            # The scale in float64: the fold then adds no rounding beyond storing W * s in float32.
            scale = torch.rsqrt(bn.running_var.double() + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale
            if conv.bias is not None:
                shift = shift + conv.bias.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            shape = (-1,) + (1,) * (conv.weight.dim() - 1)
            folded.weight.copy_(conv.weight.double() * scale.view(shape))
            folded.bias.copy_(shift)


def _conv_with_bias_like(conv):
    """A convolution configured as ``conv`` but with a bias, its tensors laid out as ``conv``'s."""
    folded = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                        padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight = nn.Parameter(torch.empty_like(conv.weight), requires_grad=False)   # keeps channels_last
    folded.bias.requires_grad_(False)
    return folded.eval()


# ----------------------------------------------------------------------------- fusion

def fusion_available():
    """Whether this PyTorch has oneDNN's fused convolution (what torch.compile's CPU backend uses)."""
    mkldnn = getattr(torch.ops, 'mkldnn', None)
    return torch.backends.mkldnn.is_available() and mkldnn is not None and \
        hasattr(mkldnn, '_convolution_pointwise') and hasattr(mkldnn, '_convolution_pointwise_')


@functools.cache
def onednn_bf16():
    """Whether oneDNN runs bfloat16 convolutions on this CPU (AVX512-BF16, AMX): elsewhere (an
    AVX2 CPU, or ONEDNN_MAX_CPU_ISA=AVX2) its fused bfloat16 call raises, and FusedConv runs the
    unfused operations, which PyTorch emulates."""
    check = getattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', None)
    try:
        return bool(check is not None and check())
    except RuntimeError:
        return False


class FusedConv(nn.Module):
    """``relu(conv(x))``, or ``relu(conv(x) + other)``, as one oneDNN convolution with post-ops for
    channels_last float32 (or, under autocast, bfloat16 where oneDNN has it) tensors on the CPU;
    the same operations one by one otherwise (oneDNN has no such post-ops for NCHW bfloat16). It
    reads ``conv``'s weights at every call, so it follows the folded weights' refresh and the
    model's moves without a refresh of its own. The ReLU post-op is used only where the
    pre-activation is certainly finite (module docstring); elsewhere PyTorch's ReLU follows the
    fused convolution and addition, so NaN stays NaN."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        # Set by _sum_into_dead_shortcuts when nothing reads ``other`` after this call.
        self.overwrite_other = False
        # Set by _link_bounds: the fused calls whose outputs this call's input and ``other`` are
        # (the bound of such a tensor is known without reading it), or None.
        self.input_from = self.other_from = None
        # A bound on |output| of this module's last call (inf: not known); read by the calls it feeds.
        self.output_bound = math.inf
        self.gains = WeightGains(conv)

    def forward(self, x, other=None):
        conv = self.conv
        weight, bias = conv.weight, conv.bias
        if x.device.type == 'cpu' and x.dim() == 4 and torch.is_autocast_enabled('cpu'):
            dtype = torch.get_autocast_dtype('cpu')
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            other = None if other is None else other.to(dtype)
        # Under torch.compile the operations are left to the compiler (the bound check reads
        # tensors on the host, which would break its graph).
        if torch.compiler.is_compiling() or not (x.device.type == 'cpu' and x.dim() == 4
                and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and onednn_bf16()))
                and weight.dtype == x.dtype and x.is_contiguous(memory_format=torch.channels_last)
                and (other is None or (other.dtype == x.dtype and other.shape == _output_shape(conv, x)
                                       and other.is_contiguous(memory_format=torch.channels_last)))):
            self.output_bound = math.inf   # not tracked here: the calls it feeds measure their inputs
            out = conv(x) if other is None else conv(x) + other
            return F.relu(out)
        finite = self._pre_activation_is_finite(x, other)
        if other is None:
            out = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, conv.padding, conv.stride, conv.dilation,
                                                          conv.groups, 'relu' if finite else 'none', [], '')
        elif self.overwrite_other and not other.requires_grad:
            out = torch.ops.mkldnn._convolution_pointwise_.binary(
                other, x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups, 'add', 1.0,
                'relu' if finite else None, [], None)
        else:
            out = torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups, 'add', None,
                'relu' if finite else None, [], None)
        return out if finite else out.relu_()   # PyTorch's ReLU: NaN stays NaN

    def _pre_activation_is_finite(self, x, other):
        """Whether ``conv(x) (+ other)`` is certainly finite (module docstring); sets
        ``output_bound``. Bounds passed along the graph are used first, measured ones where those
        are not known or too loose to tell."""
        bound = self._pre_activation_bound(x, other, self.input_from, self.other_from)
        if not bound < SAFE_MAGNITUDE and (self.input_from or self.other_from):
            bound = self._pre_activation_bound(x, other, None, None)
        finite = bound < SAFE_MAGNITUDE   # False for NaN: a non-finite input or weight
        self.output_bound = bound if finite else math.inf
        return finite

    def _pre_activation_bound(self, x, other, input_from, other_from):
        weight_gain, bias_size = self.gains()
        bound = weight_gain * _magnitude(x, input_from) + bias_size
        return bound if other is None else bound + _magnitude(other, other_from)


class WeightGains:
    """``gains()``: (max over output channels of the sum of |weights|, max |bias|) of convolution
    ``conv`` in float64 -- |conv(x)| <= gain * max|x| + max|bias| -- computed again only when its
    weights change (a move, a refresh, a new layout), so once per grid point."""

    def __init__(self, conv):
        self.conv = conv
        self._key, self._gains = None, None

    def __call__(self):
        weight, bias = self.conv.weight, self.conv.bias
        key = (weight.data_ptr(), weight._version) + (() if bias is None else (bias.data_ptr(), bias._version))
        if key != self._key:
            with torch.no_grad():
                gain = weight.detach().double().abs().flatten(1).sum(dim=1).max().item()
                size = 0.0 if bias is None else bias.detach().double().abs().max().item()
            self._key, self._gains = key, (gain, size)
        return self._gains


class _FusedOutput:
    """The bound of what a fused call returned last (in this forward pass: it runs first)."""

    def __init__(self, fused):
        self.fused = fused

    def bound(self):
        return self.fused.output_bound


class _ConvolutionOutput:
    """The bound of a plain convolution's output, from the bound of its input."""

    def __init__(self, conv, source):
        self.gains, self.source = WeightGains(conv), source

    def bound(self):
        gain, size = self.gains()
        return gain * self.source.bound() + size


def _magnitude(tensor, source):
    """A bound on max |tensor|: ``source``'s (see _link_bounds) when it has one, else measured
    (inf when the tensor holds inf or NaN)."""
    if source is not None:
        bound = source.bound()
        if bound < SAFE_MAGNITUDE:
            return bound
    # The flat view of a channels_last tensor is free, and min/max over it is one fast pass.
    flat = tensor.permute(0, 2, 3, 1).reshape(-1) if tensor.dim() == 4 else tensor.reshape(-1)
    low, high = torch.aminmax(flat)
    size = torch.maximum(-low, high).item()
    return size if math.isfinite(size) else math.inf


def _output_shape(conv, x):
    """The shape of ``conv(x)`` (the binary post-op takes an ``other`` of exactly that shape)."""
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
            zip(x.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
    return torch.Size([x.shape[0], conv.out_channels, *size])


def _is_relu(node, module):
    if node.op == 'call_function' and node.target in (F.relu, torch.relu):
        return len(node.args) == 1 and set(node.kwargs) <= {'inplace'}
    if node.op == 'call_method' and node.target in ('relu', 'relu_'):
        return len(node.args) == 1 and not node.kwargs
    return node.op == 'call_module' and type(module.get_submodule(node.target)) is nn.ReLU


def _fusable_conv(node, module):
    """Whether ``node`` is a call of a 2-D convolution oneDNN can fuse, used by one node only."""
    if not (isinstance(node, torch.fx.Node) and node.op == 'call_module' and len(node.users) == 1
            and len(node.args) == 1 and not node.kwargs):
        return False
    conv = module.get_submodule(node.target)
    return type(conv) is nn.Conv2d and conv.padding_mode == 'zeros' and not isinstance(conv.padding, str)


def _fuse_activations(module):
    """Replace conv -> relu and conv -> add -> relu chains of the GraphModule ``module`` by
    FusedConv calls; returns how many convolutions were fused."""
    graph, fused = module.graph, 0
    for relu in list(graph.nodes):
        if not _is_relu(relu, module) or not isinstance(relu.args[0], torch.fx.Node):
            continue
        source = relu.args[0]
        if _fusable_conv(source, module):
            conv_node, other, dead = source, None, [relu, source]
        elif source.op == 'call_function' and source.target in (operator.add, torch.add) and not source.kwargs \
                and len(source.args) == 2 and len(source.users) == 1:
            conv_node = next((a for a in source.args if _fusable_conv(a, module)), None)
            if conv_node is None:
                continue
            other = source.args[1] if source.args[0] is conv_node else source.args[0]
            if not isinstance(other, torch.fx.Node) or other is conv_node:
                continue
            dead = [relu, source, conv_node]
        else:
            continue
        name = FUSED_PREFIX + conv_node.name
        module.add_submodule(name, FusedConv(module.get_submodule(conv_node.target)))
        with graph.inserting_before(relu):
            call = graph.call_module(name, (conv_node.args[0],) if other is None else (conv_node.args[0], other))
        relu.replace_all_uses_with(call)
        for node in dead:
            graph.erase_node(node)
        fused += 1
    return fused


def _is_convolution_call(node, module):
    """Whether ``node`` calls a convolution (fused or not): its result is a new tensor, never a view
    of its input."""
    return node.op == 'call_module' and isinstance(module.get_submodule(node.target), (FusedConv,) + CONVOLUTIONS)


def _sum_into_dead_shortcuts(module):
    """Let each fused conv -> add -> ReLU call of ``module`` write into its shortcut tensor where that
    tensor is a convolution's fresh output that nothing reads after the call; returns how many.

    A call that writes in place returns its shortcut's memory, so memory is tracked by ``owner``
    (the node that allocated it). The shortcut may be overwritten only if every other reader of
    that memory is a convolution called before this one: a reader of another kind might have
    made a view of it that is read later."""
    order = {node: i for i, node in enumerate(module.graph.nodes)}
    owner, in_place = {}, 0
    for node in module.graph.nodes:
        owner[node] = node
        if node.op != 'call_module' or len(node.args) != 2 or not isinstance(module.get_submodule(node.target), FusedConv):
            continue
        other = node.args[1]
        if not isinstance(other, torch.fx.Node) or not _is_convolution_call(owner[other], module):
            continue
        readers = [user for n, o in owner.items() if o is owner[other] for user in n.users if user is not node]
        if all(order[user] < order[node] and _is_convolution_call(user, module) for user in readers):
            module.get_submodule(node.target).overwrite_other = True
            owner[node] = owner[other]
            in_place += 1
    return in_place


# Operations whose output is no larger than their input (max |out| <= max |in|) and that change no
# tensor: a bound passes through them unchanged.
_PASS_THROUGH_FUNCTIONS = (operator.getitem, torch.flatten, F.max_pool1d, F.max_pool2d, F.max_pool3d,
                           F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
                           F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
_PASS_THROUGH_METHODS = ('view', 'reshape', 'flatten', 'permute', 'contiguous')
_PASS_THROUGH_MODULES = (nn.Identity, nn.Flatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _link_bounds(module):
    """Give each fused call of ``module`` the bound sources of its input and ``other`` where the
    graph computes them from another fused call's output (through plain convolutions and
    operations that pass a bound through), so that it reads no tensor to bound them. Only where
    every reader of each tensor on the way is such an operation or a fused call: none of those
    changes a tensor another reads later (an in-place sum writes into a shortcut only after its
    last reader), where another operation might."""
    def kind(node):
        if not isinstance(node, torch.fx.Node):
            return None
        if node.op == 'call_module':
            sub = module.get_submodule(node.target)
            if isinstance(sub, FusedConv):
                return 'fused'
            if type(sub) in CONVOLUTIONS and len(node.args) == 1 and not node.kwargs:
                return 'convolution'
            return 'pass' if type(sub) in _PASS_THROUGH_MODULES else None
        if node.op == 'call_function' and node.target in _PASS_THROUGH_FUNCTIONS:
            return 'pass'
        if node.op == 'call_function' and node.target is F.pad:
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get('mode', 'constant')
            value = node.args[3] if len(node.args) > 3 else node.kwargs.get('value', None)
            return 'pass' if mode == 'constant' and not value else None   # zeros added: no larger
        if node.op == 'call_method' and node.target in _PASS_THROUGH_METHODS:
            return 'pass'
        return None

    def only_read(node):
        return all(kind(user) is not None and (kind(user) != 'pass' or only_read(user)) for user in node.users)

    def source(node):
        what = kind(node)
        if what is None or not only_read(node):
            return None
        if what == 'fused':
            return _FusedOutput(module.get_submodule(node.target))
        inner = source(node.args[0])
        if inner is None or what == 'pass':
            return inner
        return _ConvolutionOutput(module.get_submodule(node.target), inner)

    for node in module.graph.nodes:
        if kind(node) == 'fused':
            fused = module.get_submodule(node.target)
            fused.input_from = source(node.args[0])
            fused.other_from = source(node.args[1]) if len(node.args) == 2 else None
