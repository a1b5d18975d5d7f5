"""Built-in models by name, built for a dataset's shape and levels."""

from __future__ import annotations

import dataclasses
import math

from lvmkit.models.autoencoders import Autoencoder, AutoencoderConfig
from lvmkit.models.autoregressive import AutoregressiveConfig, AutoregressiveDensity
from lvmkit.models.conditional import ConditionalLVM, ConditionalLVMConfig
from lvmkit.models.gmm import GaussianMixture, GaussianMixtureConfig
from lvmkit.models.lvm import GaussianLVM, GaussianLVMConfig

# name -> (model class, config class, fixed config values, one line for --help and the README)
MODELS = {
    "gmm": (GaussianMixture, GaussianMixtureConfig, {}, "Gaussian mixture, z summed out"),
    "lvm": (GaussianLVM, GaussianLVMConfig, {}, "p(z)=N(0,I), p(x|z)=obs(decoder(z))"),
    "clvm": (ConditionalLVM, ConditionalLVMConfig, {}, "p(y|x)=int p(y|x,z)p(z|x)dz, completion"),
    "ae": (Autoencoder, AutoencoderConfig, {"kind": "bottleneck"}, "bottleneck autoencoder"),
    "sae": (
        Autoencoder,
        AutoencoderConfig,
        {"kind": "sparse"},
        "sparse (L1 / Laplace) autoencoder",
    ),
    "dae": (Autoencoder, AutoencoderConfig, {"kind": "denoising"}, "denoising autoencoder"),
    "pixelcnn": (
        AutoregressiveDensity,
        AutoregressiveConfig,
        {"net": "gated"},
        "gated PixelCNN density p(x)",
    ),
    "cpixelcnn": (
        AutoregressiveDensity,
        AutoregressiveConfig,
        {"net": "gated"},
        "class-conditional gated PixelCNN p(x|y)",
    ),
    "pixellvm": (
        GaussianLVM,
        GaussianLVMConfig,
        {"likelihood": "pixelcnn"},
        "GaussianLVM with a PixelCNN decoder, free bits and KL warm-up",
    ),
    "pixeltransformer": (
        AutoregressiveDensity,
        AutoregressiveConfig,
        {"net": "transformer"},
        "Pixel Transformer: local causal self-attention p(x)",
    ),
    "scanlinernn": (
        AutoregressiveDensity,
        AutoregressiveConfig,
        {"net": "rnn"},
        "scanline GRU over raster order p(x)",
    ),
}
# Config defaults that differ from the classes' own when a model is fitted to image data by name.
IMAGE_DEFAULTS = {
    "gmm": {"components": 10},
    "cpixelcnn": {"num_classes": 10},
    "pixeltransformer": {"layers": 3, "features": 64},
    "pixellvm": {"free_bits": 0.25, "kl_warmup_steps": 500},
    "scanlinernn": {"layers": 2, "features": 64},
}


def config_fields(name: str) -> dict:
    """The settable config fields of a built-in model and their defaults."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    _, config_cls, fixed, _ = MODELS[name]
    values = {f.name: f.default for f in dataclasses.fields(config_cls) if f.name not in fixed}
    values.update(IMAGE_DEFAULTS.get(name, {}))
    for derived in ("image_shape", "dim"):  # set from the data
        values.pop(derived, None)
    return values


def build_model(name: str, image_shape, data_levels: int | None, settings: dict | None = None):
    """A built-in model sized for images of ``image_shape`` (C, H, W) with ``data_levels``
    levels; ``settings`` override its config defaults."""
    overrides = settings or {}
    fields = config_fields(name)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {unknown} for model {name!r}; valid: {sorted(fields)}"
        )
    model_cls, config_cls, fixed, _ = MODELS[name]
    values = {**fields, **overrides, **fixed}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    if name == "gmm":
        values["dim"] = math.prod(image_shape)
    else:
        values["image_shape"] = tuple(image_shape)
        discrete = ("categorical", "logistic", "pixelcnn")
        if values.get("levels") is None and values.get("likelihood") in discrete:
            values["levels"] = data_levels
        if model_cls is AutoregressiveDensity and values["net"] == "gated":
            c = values["image_shape"][0]  # features must split into one group per channel
            values["features"] = -(-values["features"] // c) * c
    return model_cls(config_cls(**values))


def rebuild(name: str, config: dict):
    """A model from a saved config dict (lists back to tuples)."""
    model_cls, config_cls, _, _ = MODELS[name]
    return model_cls(
        config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    )
