"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Pixels are generated in raster order and, within a pixel, channel by channel (R, then G given R,
then B given R and G). Two stacks avoid the blind spot of a plain masked 3x3 stack: the vertical
stack sees the rows above (its output is shifted down one row before it is used), the horizontal
stack the pixels to the left in the current row, and the vertical feeds the horizontal through a
1x1 convolution, never the reverse.

Channel order inside a pixel is kept by splitting every feature map into C groups, one per data
channel: at the current pixel, group c may see groups < c (mask A, first layer) or <= c (mask B).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def group_mask(out_groups: Tensor, in_groups: Tensor, strict: bool) -> Tensor:
    """(out, in) connectivity at the current pixel: in-group < out-group (mask A) or <=."""
    return (
        (in_groups[None, :] < out_groups[:, None])
        if strict
        else (in_groups[None, :] <= out_groups[:, None])
    )


def groups(n: int, c: int) -> Tensor:
    """Channel -> data-channel group for n feature channels in c equal blocks."""
    return torch.arange(n) * c // n


class MaskedConv2d(nn.Conv2d):
    """A convolution whose weight is multiplied by a fixed 0/1 mask (out, in, kh, kw).

    Parameters
    ----------
    in_channels, out_channels, kernel_size, padding
        As for ``nn.Conv2d``.
    mask : Tensor of shape (out_channels, in_channels, kh, kw)
    """

    def __init__(self, in_channels, out_channels, kernel_size, mask: Tensor, padding=0):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


def _horizontal_mask(out_g: Tensor, in_g: Tensor, width: int, strict: bool) -> Tensor:
    """1 x width kernel over columns j-width+1 .. j: full to the left, group-masked at j."""
    mask = torch.ones(len(out_g), len(in_g), 1, width)
    mask[:, :, 0, -1] = group_mask(out_g, in_g, strict).float()
    return mask


class GatedLayer(nn.Module):
    """One gated layer: vertical and horizontal stacks, tanh(a) * sigmoid(b), conditioning
    V h added to both halves before the gate, a residual on the horizontal stack."""

    def __init__(self, in_ch: int, n: int, c: int, kernel: int, context: int, first: bool):
        super().__init__()
        half = kernel // 2
        in_g, hid_g = groups(in_ch, c), groups(n, c)
        gate_g = torch.cat([hid_g, hid_g])  # the 2n pre-activations [a | b], each in c blocks
        self.first = first
        # Vertical: rows i-half .. i, all columns j-half .. j+half; used shifted down one row.
        self.v_conv = nn.Conv2d(in_ch, 2 * n, (half + 1, kernel), padding=(half, half))
        self.h_conv = MaskedConv2d(
            in_ch,
            2 * n,
            (1, half + 1),
            _horizontal_mask(gate_g, in_g, half + 1, strict=first),
            padding=(0, half),
        )
        self.v_to_h = nn.Conv2d(2 * n, 2 * n, 1)  # carries rows above only: no mask needed
        self.h_out = MaskedConv2d(n, n, 1, group_mask(hid_g, hid_g, False)[:, :, None, None])
        self.cond = nn.Linear(context, 4 * n) if context else None
        self.n = n

    def forward(self, v: Tensor, h: Tensor, ctx: Tensor | None) -> tuple[Tensor, Tensor]:
        rows, cols = v.shape[-2:]
        v_pre = self.v_conv(v)[..., :rows, :]  # (B, 2n, H, W): rows <= i
        h_pre = self.h_conv(h)[..., :cols]  # columns <= j (the current one group-masked)
        v_down = F.pad(v_pre, (0, 0, 1, 0))[..., :rows, :]  # rows < i: safe for the current row
        h_pre = h_pre + self.v_to_h(v_down)
        if self.cond is not None:
            cv, ch = self.cond(ctx)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + cv, h_pre + ch
        v_out = _gate(v_pre)
        h_gated = self.h_out(_gate(h_pre))
        h_out = h_gated if self.first else h + h_gated  # the residual is on the horizontal stack
        return v_out, h_out


def _gate(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedPixelCNN(nn.Module):
    """x (B, C, H, W) scaled to [-1, 1], context (B, context) or None -> per-element parameters
    (B, params, C, H, W): output channel c of pixel (i, j) depends only on pixels before (i, j) in
    raster order and on channels < c of pixel (i, j).

    Parameters
    ----------
    channels : int
        C.
    params : int
        Parameters per element (e.g. 256 logits, or a logistic mixture's).
    features : int
        Feature maps of each gated layer.
    layers : int
    kernel : int
        The vertical and horizontal stacks' kernel size.
    context : int
        Size of the conditioning vector (0: none).
    """

    def __init__(
        self,
        channels: int,
        params: int,
        *,
        features: int = 64,
        layers: int = 5,
        kernel: int = 3,
        context: int = 0,
    ):
        super().__init__()
        if features % channels:
            raise ValueError(f"features ({features}) must be a multiple of channels ({channels})")
        c, n = channels, features
        self.channels, self.params = c, params
        self.layers = nn.ModuleList(
            GatedLayer(c if i == 0 else n, n, c, kernel, context, first=i == 0)
            for i in range(layers)
        )
        hid_g, out_g = groups(n, c), groups(params * c, c)  # outputs: c blocks of `params`
        self.head = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(n, n, 1, group_mask(hid_g, hid_g, False)[:, :, None, None]),
            nn.ReLU(),
            MaskedConv2d(n, params * c, 1, group_mask(out_g, hid_g, False)[:, :, None, None]),
        )

    def start_generation(self, x: Tensor, context: Tensor | None = None) -> PixelCNNGeneration:
        """Element-by-element generation from x (B, C, H, W) in [-1, 1] (elements not yet
        generated may hold anything): see PixelCNNGeneration."""
        return PixelCNNGeneration(self, x, context)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, context)
        out = self.head(h)  # (B, C * params, H, W), channel-major blocks
        b, _, rows, cols = out.shape
        return out.reshape(b, self.channels, self.params, rows, cols).transpose(1, 2)


def _matrix(conv: nn.Conv2d) -> Tensor:
    """A 1 x w convolution's (masked) weight as a matrix for inputs laid out (w, in)."""
    weight = conv.weight * conv.mask if isinstance(conv, MaskedConv2d) else conv.weight
    return weight[:, :, 0, :].permute(2, 1, 0).reshape(-1, weight.shape[0])


class PixelCNNGeneration:
    """Generation with per-layer caches (Ramachandran et al. 2017), element by element in
    raster-then-channel order: per layer, the vertical stack is updated once per finished row,
    the horizontal stack once per pixel, each as a few small matrix products. The same
    parameters as a full forward pass, at a fraction of the cost.

    ``step(t, needed)`` gives element t's parameters (B, P) given the elements before it (None
    when not ``needed``); ``write(t, value)`` records element t's value, scaled as the net's
    input. Both are called for every t in order."""

    @torch.no_grad()
    def __init__(self, net: GatedPixelCNN, x: Tensor, context: Tensor | None):
        b, c, rows, cols = x.shape
        self.net, self.shape = net, (c, rows, cols)
        layers = net.layers
        self.half = layers[0].h_conv.kernel_size[1] - 1
        n = layers[0].n
        # Horizontal features channels-last (B, H, W, ch): a pixel's slab is contiguous. h_in[l]
        # is layer l's horizontal input (h_in[0] the image); v_in likewise for the vertical stack.
        self.h_in = [x.permute(0, 2, 3, 1).contiguous()]
        self.h_in += [x.new_zeros(b, rows, cols, n) for _ in layers]
        self.v_in = [x.clone()] + [x.new_zeros(b, n, rows, cols) for _ in layers]
        self.v_above = [x.new_zeros(b, cols, 2 * n) for _ in layers]  # v_pre of the row above
        self.weights = [
            (
                _matrix(layer.h_conv),
                layer.h_conv.bias,
                _matrix(layer.v_to_h),
                layer.v_to_h.bias,
                _matrix(layer.h_out),
                layer.h_out.bias,
            )
            for layer in layers
        ]
        self.head = [(_matrix(m), m.bias) for m in net.head if isinstance(m, nn.Conv2d)]
        zero = x.new_zeros(b, 2 * n)  # unconditioned layers add nothing (x + 0 is exact)
        self.conds = [
            layer.cond(context).chunk(2, dim=1) if layer.cond is not None else (zero, zero)
            for layer in layers
        ]

    def _position(self, t: int) -> tuple[int, int, int]:
        c, _, cols = self.shape
        i, rest = divmod(t, cols * c)
        j, k = divmod(rest, c)
        return i, j, k

    def _pixel_pass(self, i: int, j: int) -> Tensor:
        """Every layer at (i, j), storing its features; the head's output (B, C, P)."""
        half, h_in = self.half, self.h_in
        b = h_in[0].shape[0]
        for li, layer in enumerate(self.net.layers):
            w_h, b_h, w_vh, b_vh, w_o, b_o = self.weights[li]
            slab = h_in[li][:, i, max(0, j - half) : j + 1]  # (B, <= half + 1, in)
            if j < half:  # zeros left of the image
                slab = F.pad(slab, (0, 0, half - j, 0))
            pre = torch.addmm(b_h, slab.reshape(b, -1), w_h)
            pre = pre + torch.addmm(b_vh, self.v_above[li][:, j], w_vh) + self.conds[li][1]
            gated = torch.addmm(b_o, _gate(pre), w_o)
            h_in[li + 1][:, i, j] = gated if layer.first else h_in[li][:, i, j] + gated
        out = h_in[-1][:, i, j]
        for w, bias in self.head:
            out = torch.addmm(bias, torch.relu(out), w)
        return out.reshape(b, self.shape[0], self.net.params)

    @torch.no_grad()
    def step(self, t: int, needed: bool = True) -> Tensor | None:
        """Element t's parameters (B, P) given the elements before it; None if not needed."""
        i, j, k = self._position(t)
        # A pixel's stored features never depend on its last channel (group masks), so one
        # pass at its last channel stores them even when that channel is not drawn.
        if needed or k == self.shape[0] - 1:
            out = self._pixel_pass(i, j)
            return out[:, k] if needed else None
        return None

    @torch.no_grad()
    def write(self, t: int, value: Tensor) -> None:
        """Record element t's value (B,), scaled to [-1, 1] as the net's input."""
        i, j, k = self._position(t)
        self.v_in[0][:, k, i, j] = self.h_in[0][:, i, j, k] = value
        c, _, cols = self.shape
        if j == cols - 1 and k == c - 1:  # the row is done: advance the vertical stacks
            half = self.half
            for li, layer in enumerate(self.net.layers):
                slab = self.v_in[li][:, :, max(0, i - half) : i + 1]
                slab = F.pad(slab, (half, half, half - min(i, half), 0))
                pre = F.conv2d(slab, layer.v_conv.weight, layer.v_conv.bias)[:, :, 0]  # (B,2n,W)
                self.v_above[li] = pre.transpose(1, 2).contiguous()
                self.v_in[li + 1][:, :, i] = _gate(pre + self.conds[li][0][..., None])
