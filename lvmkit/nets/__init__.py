"""Plain torch.nn building blocks that map tensors to distribution parameters; no Pyro here."""

from lvmkit.nets.conv import ConvDecoder, ConvEncoder
from lvmkit.nets.mlp import MLP

__all__ = ["MLP", "ConvDecoder", "ConvEncoder"]
