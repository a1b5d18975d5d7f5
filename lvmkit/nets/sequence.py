"""Autoregressive image nets over the element sequence (raster order, then channel): a Pixel
Transformer with local causal attention and a scanline RNN.

Both read an image as a sequence of C*H*W elements, each token carrying the *previous* element's
value (a start token first), so the output at position t depends only on elements before t.
Both map (B, C, H, W) in [-1, 1] and a context (B, D) or None to parameters (B, P, C, H, W),
like GatedPixelCNN, and generate element by element in O(1) passes per element
(``start_generation``): the transformer with a key/value cache over its window, the RNN by
carrying its hidden state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _to_sequence(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W*C, 1): pixels in raster order, channels within a pixel."""
    return x.permute(0, 2, 3, 1).reshape(len(x), -1, 1)


def _from_sequence(out: Tensor, shape) -> Tensor:
    """(B, H*W*C, P) -> (B, P, C, H, W)."""
    c, h, w = shape
    return out.reshape(len(out), h, w, c, -1).permute(0, 4, 3, 1, 2)


class _Shifted(nn.Module):
    """Token t = embed(element t-1) (+ a learned start token at t = 0) + context."""

    def __init__(self, width: int, context: int):
        super().__init__()
        self.value = nn.Linear(1, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.context = nn.Linear(context, width) if context else None

    def forward(self, seq: Tensor, context: Tensor | None) -> Tensor:
        tokens = torch.cat([self.start.expand(len(seq), 1, -1), self.value(seq[:, :-1])], dim=1)
        if self.context is not None:
            tokens = tokens + self.context(context)[:, None]
        return tokens


class LocalCausalAttention(nn.Module):
    """Each token attends to itself and the ``window - 1`` tokens before it: cost O(n * window)."""

    def __init__(self, width: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).unbind(2)
        w = self.window
        # Windows of keys/values ending at each position; zero padding before the start.
        k = F.pad(k, (0, 0, 0, 0, w - 1, 0)).unfold(1, w, 1)  # (B, n, heads, dh, w)
        v = F.pad(v, (0, 0, 0, 0, w - 1, 0)).unfold(1, w, 1)
        scores = torch.einsum("bnhd,bnhdw->bnhw", q, k) / math.sqrt(d // self.heads)
        before_start = (
            torch.arange(w, device=x.device) < (w - 1 - torch.arange(n, device=x.device))[:, None]
        )
        scores = scores.masked_fill(before_start[None, :, None, :], float("-inf"))
        out = torch.einsum("bnhw,bnhdw->bnhd", scores.softmax(-1), v).reshape(b, n, d)
        return self.out(out)


class _Generation:
    """Element-by-element generation over the element sequence: ``step(t)`` gives element t's
    parameters (B, P) from the elements before it, ``write(t, value)`` records element t's value
    (scaled as the net's input). Both are called for every t in order."""

    def __init__(self, embed: _Shifted, x: Tensor, context: Tensor | None):
        self.seq = _to_sequence(x).clone()  # (B, n, 1)
        self.embed = embed
        self.context = 0.0 if embed.context is None else embed.context(context)  # (B, width)

    def token(self, t: int) -> Tensor:
        """Token t as _Shifted makes it: the previous element's value (or the start), context."""
        if t == 0:
            previous = self.embed.start.expand(len(self.seq), -1)
        else:
            previous = self.embed.value(self.seq[:, t - 1])
        return previous + self.context

    def write(self, t: int, value: Tensor) -> None:
        """Record element t's value (B,), scaled to [-1, 1] as the net's input."""
        self.seq[:, t, 0] = value


class TransformerGeneration(_Generation):
    """Incremental decoding: per layer, the keys and values of the last ``window`` positions
    in a ring buffer, so element t costs O(window) per layer instead of a full pass."""

    @torch.no_grad()
    def __init__(self, net: PixelTransformer, x: Tensor, context: Tensor | None):
        super().__init__(net.embed, x, context)
        self.net = net
        attn = net.blocks[0][1]
        b, width = len(x), net.position.shape[1]
        self.heads, self.window, self.dh = attn.heads, attn.window, width // attn.heads
        self.keys = [x.new_zeros(b, self.heads, self.window, self.dh) for _ in net.blocks]
        self.values = [x.new_zeros(b, self.heads, self.window, self.dh) for _ in net.blocks]

    @torch.no_grad()
    def step(self, t: int, needed: bool = True) -> Tensor:
        """Element t's parameters (B, P) given the elements before it."""
        h = self.token(t) + self.net.position[t]  # (B, width)
        b, slot, filled = len(h), t % self.window, min(t + 1, self.window)
        for (norm1, attn, norm2, mlp), keys, values in zip(
            self.net.blocks, self.keys, self.values, strict=True
        ):
            q, k, v = attn.qkv(norm1(h)).reshape(b, 3, self.heads, self.dh).unbind(1)
            keys[:, :, slot], values[:, :, slot] = k, v
            # the window's positions in any order: attention is a sum over them
            scores = torch.einsum("bhd,bhwd->bhw", q, keys[:, :, :filled]) / math.sqrt(self.dh)
            out = torch.einsum("bhw,bhwd->bhd", scores.softmax(-1), values[:, :, :filled])
            h = h + attn.out(out.reshape(b, -1))
            h = h + mlp(norm2(h))
        return self.net.head(h)


class RNNGeneration(_Generation):
    """One GRU step per element, carrying the hidden state."""

    @torch.no_grad()
    def __init__(self, net: ScanlineRNN, x: Tensor, context: Tensor | None):
        super().__init__(net.embed, x, context)
        self.net, self.hidden = net, None

    @torch.no_grad()
    def step(self, t: int, needed: bool = True) -> Tensor:
        """Element t's parameters (B, P) given the elements before it."""
        out, self.hidden = self.net.rnn(self.token(t)[:, None], self.hidden)
        return self.net.head(out[:, 0])


class PixelTransformer(nn.Module):
    """Pre-norm transformer blocks with local causal attention, learned position embeddings
    and the context added to every token.

    Parameters
    ----------
    image_shape : tuple of (int, int, int)
    params : int
        Parameters per element.
    width : int
        Token width.
    layers, heads : int
    window : int
        How many preceding elements each attends to.
    context : int
        Size of the conditioning vector (0: none).
    """

    def __init__(
        self,
        image_shape,
        params: int,
        *,
        width: int = 64,
        layers: int = 3,
        heads: int = 4,
        window: int = 32,
        context: int = 0,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        n = math.prod(self.image_shape)
        self.embed = _Shifted(width, context)
        self.position = nn.Parameter(0.02 * torch.randn(n, width))
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [
                    nn.LayerNorm(width),
                    LocalCausalAttention(width, heads, window),
                    nn.LayerNorm(width),
                    nn.Sequential(
                        nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
                    ),
                ]
            )
            for _ in range(layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, params))

    def start_generation(self, x: Tensor, context: Tensor | None = None) -> TransformerGeneration:
        """Element-by-element generation from x (B, C, H, W) in [-1, 1]."""
        return TransformerGeneration(self, x, context)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.embed(_to_sequence(x), context) + self.position
        for norm1, attn, norm2, mlp in self.blocks:
            h = h + attn(norm1(h))
            h = h + mlp(norm2(h))
        return _from_sequence(self.head(h), self.image_shape)


class ScanlineRNN(nn.Module):
    """A GRU over the element sequence (the PixelRNN family in its simplest, scanline form).

    Parameters
    ----------
    image_shape : tuple of (int, int, int)
    params : int
        Parameters per element.
    width, layers : int
        The GRU's.
    context : int
        Size of the conditioning vector (0: none).
    """

    def __init__(
        self, image_shape, params: int, *, width: int = 64, layers: int = 2, context: int = 0
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.embed = _Shifted(width, context)
        self.rnn = nn.GRU(width, width, num_layers=layers, batch_first=True)
        self.head = nn.Linear(width, params)

    def start_generation(self, x: Tensor, context: Tensor | None = None) -> RNNGeneration:
        """Element-by-element generation from x (B, C, H, W) in [-1, 1]."""
        return RNNGeneration(self, x, context)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        out, _ = self.rnn(self.embed(_to_sequence(x), context))
        return _from_sequence(self.head(out), self.image_shape)
