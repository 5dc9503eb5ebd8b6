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
"""
import torch
import torch.fx
from torch import nn

from errors import UsageError

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FOLDED_PREFIX = 'folded_'


class BatchNormFolding:
    """``module``: the model to call for inference (a torch.fx GraphModule sharing every layer of
    ``net`` except the folded convolutions). ``refresh()``: recompute the folded weights from
    ``net``'s current state. ``num_folded``: how many Conv -> BatchNorm pairs were folded."""

    def __init__(self, net):
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
        graph.lint()
        self.module.recompile()
        self.num_folded = len(self.pairs)
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
