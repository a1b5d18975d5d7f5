"""Plain torch.nn building blocks that map tensors to distribution parameters; no Pyro here."""

from lvmkit.nets.conv import ConvDecoder, ConvEncoder
from lvmkit.nets.mlp import MLP
from lvmkit.nets.pixelcnn import GatedPixelCNN, MaskedConv2d
from lvmkit.nets.sequence import PixelTransformer, ScanlineRNN

__all__ = [
    "MLP",
    "ConvDecoder",
    "ConvEncoder",
    "GatedPixelCNN",
    "MaskedConv2d",
    "PixelTransformer",
    "ScanlineRNN",
]
