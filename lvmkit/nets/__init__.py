"""Plain torch.nn building blocks that map tensors to distribution parameters."""

from lvmkit.nets.mlp import MLP, GaussianDecoder, GaussianEncoder

__all__ = ["MLP", "GaussianDecoder", "GaussianEncoder"]
