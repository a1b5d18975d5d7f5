"""Probabilistic programs: each built-in model is a ``BuiltinModel`` (models/base.py), an nn.Module
with ``model`` and ``guide`` methods and a written contract; ``register_model`` adds one by name."""

from lvmkit.models.autoencoders import Autoencoder, AutoencoderConfig
from lvmkit.models.autoregressive import AutoregressiveConfig, AutoregressiveDensity
from lvmkit.models.base import BuiltinModel
from lvmkit.models.conditional import (
    CompletionBaseline,
    CompletionData,
    ConditionalLVM,
    ConditionalLVMConfig,
    quadrant_masks,
)
from lvmkit.models.contrastive import ContrastiveConfig, ContrastiveEncoder
from lvmkit.models.flow import FlowConfig, NormalizingFlow
from lvmkit.models.gan import GAN, GANConfig
from lvmkit.models.gmm import GaussianMixture, GaussianMixtureConfig
from lvmkit.models.latents import FlowGuide
from lvmkit.models.lvm import GaussianLVM, GaussianLVMConfig
from lvmkit.models.registry import MODELS, build_model, rebuild, register_model
from lvmkit.models.stacked import StackedConfig, StackedDenoisingAutoencoder
from lvmkit.models.vqvae import VQVAE, VQVAEConfig

__all__ = [
    "MODELS",
    "Autoencoder",
    "AutoencoderConfig",
    "AutoregressiveConfig",
    "AutoregressiveDensity",
    "BuiltinModel",
    "CompletionBaseline",
    "CompletionData",
    "FlowConfig",
    "FlowGuide",
    "GAN",
    "GANConfig",
    "ConditionalLVM",
    "ConditionalLVMConfig",
    "ContrastiveConfig",
    "ContrastiveEncoder",
    "GaussianLVM",
    "GaussianLVMConfig",
    "GaussianMixture",
    "GaussianMixtureConfig",
    "NormalizingFlow",
    "StackedConfig",
    "StackedDenoisingAutoencoder",
    "VQVAE",
    "VQVAEConfig",
    "build_model",
    "quadrant_masks",
    "rebuild",
    "register_model",
]
