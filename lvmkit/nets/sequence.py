"""Autoregressive image nets over the element sequence (raster order, then channel): a Pixel
Transformer with local causal attention and a scanline RNN.

Both read an image as a sequence of C*H*W elements, each token carrying the *previous* element's
value (a start token first), so the output at position t depends only on elements before t.
Both map (B, C, H, W) in [-1, 1] and a context (B, D) or None to parameters (B, P, C, H, W),
like GatedPixelCNN.
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


class PixelTransformer(nn.Module):
    """Pre-norm transformer blocks with local causal attention, learned position embeddings
    and the context added to every token."""

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

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.embed(_to_sequence(x), context) + self.position
        for norm1, attn, norm2, mlp in self.blocks:
            h = h + attn(norm1(h))
            h = h + mlp(norm2(h))
        return _from_sequence(self.head(h), self.image_shape)


class ScanlineRNN(nn.Module):
    """A GRU over the element sequence (the PixelRNN family in its simplest, scanline form)."""

    def __init__(
        self, image_shape, params: int, *, width: int = 64, layers: int = 2, context: int = 0
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.embed = _Shifted(width, context)
        self.rnn = nn.GRU(width, width, num_layers=layers, batch_first=True)
        self.head = nn.Linear(width, params)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        out, _ = self.rnn(self.embed(_to_sequence(x), context))
        return _from_sequence(self.head(out), self.image_shape)
