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
"""
import functools
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
    model's moves without a refresh of its own."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        # Set by _sum_into_dead_shortcuts when nothing reads ``other`` after this call.
        self.overwrite_other = False

    def forward(self, x, other=None):
        conv = self.conv
        weight, bias = conv.weight, conv.bias
        if x.device.type == 'cpu' and x.dim() == 4 and torch.is_autocast_enabled('cpu'):
            dtype = torch.get_autocast_dtype('cpu')
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            other = None if other is None else other.to(dtype)
        if not (x.device.type == 'cpu' and x.dim() == 4
                and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and onednn_bf16()))
                and weight.dtype == x.dtype and x.is_contiguous(memory_format=torch.channels_last)
                and (other is None or (other.dtype == x.dtype and other.shape == _output_shape(conv, x)
                                       and other.is_contiguous(memory_format=torch.channels_last)))):
            out = conv(x) if other is None else conv(x) + other
            return F.relu(out)
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, conv.padding, conv.stride, conv.dilation,
                                                           conv.groups, 'relu', [], '')
        if self.overwrite_other and not other.requires_grad and not torch.compiler.is_compiling():
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                other, x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups, 'add', 1.0, 'relu', [], '')
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups, 'add', None, 'relu', [], '')


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
