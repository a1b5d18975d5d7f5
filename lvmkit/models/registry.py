"""Built-in models by name, built for a dataset's shape and levels. ``register_model`` adds one."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from dataclasses import dataclass, field

from lvmkit.models.autoencoders import Autoencoder
from lvmkit.models.autoregressive import AutoregressiveDensity
from lvmkit.models.base import BuiltinModel
from lvmkit.models.conditional import ConditionalLVM
from lvmkit.models.contrastive import ContrastiveEncoder
from lvmkit.models.flow import NormalizingFlow
from lvmkit.models.gan import GAN
from lvmkit.models.gmm import GaussianMixture
from lvmkit.models.lvm import GaussianLVM
from lvmkit.models.stacked import StackedDenoisingAutoencoder
from lvmkit.models.vqvae import VQVAE

DERIVED = ("image_shape", "dim")  # config fields set from the data, never by a user
ABILITIES = {  # declared ability -> the method it promises
    "can_sample": "sample",
    "can_complete": "complete",
    "can_reconstruct": "reconstruct",
    "can_encode": "encode",
    "gaussian_code": "decode_mean",
}


@dataclass(frozen=True)
class ModelEntry:
    cls: type  # a BuiltinModel subclass
    description: str  # one line, for --help
    fixed: dict = field(default_factory=dict)  # config values this name fixes
    defaults: dict = field(default_factory=dict)  # defaults for image data, over the class's


MODELS: dict[str, ModelEntry] = {}


def field_docs(config_class) -> dict[str, str]:
    """The comments that document a config dataclass's fields (nanoGPT style: on the field's
    line, or on the comment lines just above it), by field name."""
    import inspect
    import re

    docs, above = {}, []
    for line in inspect.getsource(config_class).splitlines():
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
            continue
        match = re.match(r"(\w+)\s*:[^=]*=.*?(?:#\s*(.*))?$", text)
        if match:
            docs[match.group(1)] = " ".join([*above, match.group(2) or ""]).strip()
        above = []
    return docs


def register_model(
    name: str,
    cls: type,
    description: str,
    *,
    fixed: dict | None = None,
    defaults: dict | None = None,
) -> None:
    """Make a ``BuiltinModel`` subclass available by name (``lvmkit fit NAME``, load_run).
    ValueError if it is not one, or declares an ability without its method.

    Parameters
    ----------
    name : str
        The name ``lvmkit fit`` takes.
    cls : type
        A ``BuiltinModel`` subclass.
    description : str
        One line for ``lvmkit fit --help``.
    fixed : dict, optional
        Config fields this name pins (e.g. ``{"kind": "sparse"}``).
    defaults : dict, optional
        Config defaults this name changes.
    """
    if not (isinstance(cls, type) and issubclass(cls, BuiltinModel)):
        raise ValueError(f"{cls!r} is not a BuiltinModel subclass (lvmkit.models.base)")
    for ability, method in ABILITIES.items():
        if getattr(cls, ability) and not callable(getattr(cls, method, None)):
            raise ValueError(
                f"{cls.__name__} declares {ability} = True but has no {method}(...); write it, "
                f"or set {ability} = False"
            )
    if cls.density not in ("exact", "bound", "ais", "importance", None):
        raise ValueError(
            f"{cls.__name__}.density must be 'exact', 'bound', 'ais', 'importance' or None"
        )
    if cls.density == "bound" and not cls.bound:
        raise ValueError(f"{cls.__name__} declares density = 'bound': say which in bound = '...'")
    if cls.density in ("exact", "bound") and cls.log_prob is BuiltinModel.log_prob:
        raise ValueError(
            f"{cls.__name__} declares density = {cls.density!r} but has no log_prob(...)"
        )
    if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
        raise ValueError(f"{cls.__name__} needs config_class, the dataclass it is built from")
    MODELS[name] = ModelEntry(cls, description, dict(fixed or {}), dict(defaults or {}))
    config = cls.config_class
    if config.__doc__ is None or config.__doc__.startswith(f"{config.__name__}("):
        config.__doc__ = config_docstring(config, name)  # help() and the API reference


def config_docstring(config_class, name: str) -> str:
    """A config dataclass's docstring, made from the comments on its fields (their one
    source, which ``lvmkit fit NAME --help`` shows too)."""
    docs = field_docs(config_class)
    lines = [f"The settings of ``lvmkit fit {name}`` and its kin (``[model]`` in a run's",
             "config.toml, ``--set model.KEY=VALUE``).", "", "Parameters",
             "----------"]  # fmt: skip
    for f in dataclasses.fields(config_class):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"{f.name} : {kind}, default {f.default!r}")
        if docs.get(f.name):
            lines += textwrap.wrap(docs[f.name], 92, initial_indent=" " * 4,
                                   subsequent_indent=" " * 4)  # fmt: skip
    return "\n".join(lines) + "\n"


register_model(
    "gmm", GaussianMixture, "Gaussian mixture, z summed out", defaults={"components": 10}
)
register_model("lvm", GaussianLVM, "p(z)=N(0,I), p(x|z)=obs(decoder(z))")
register_model("clvm", ConditionalLVM, "p(y|x)=int p(y|x,z)p(z|x)dz, completion")
register_model("ae", Autoencoder, "bottleneck autoencoder", fixed={"kind": "bottleneck"})
register_model("sae", Autoencoder, "sparse (L1 / Laplace) autoencoder", fixed={"kind": "sparse"})
register_model("dae", Autoencoder, "denoising autoencoder", fixed={"kind": "denoising"})
register_model(
    "pixelcnn", AutoregressiveDensity, "gated PixelCNN density p(x)", fixed={"net": "gated"}
)
register_model(
    "cpixelcnn",
    AutoregressiveDensity,
    "class-conditional gated PixelCNN p(x|y)",
    fixed={"net": "gated"},
    defaults={"num_classes": 10},
)
register_model(
    "pixellvm",
    GaussianLVM,
    "GaussianLVM with a PixelCNN decoder, free bits and KL warm-up",
    fixed={"likelihood": "pixelcnn"},
    defaults={"free_bits": 0.25, "kl_warmup_steps": 500},
)
register_model(
    "pixeltransformer",
    AutoregressiveDensity,
    "Pixel Transformer: local causal self-attention p(x)",
    fixed={"net": "transformer"},
    defaults={"layers": 3, "features": 64},
)
register_model(
    "scanlinernn",
    AutoregressiveDensity,
    "scanline GRU over raster order p(x)",
    fixed={"net": "rnn"},
    defaults={"layers": 2, "features": 64},
)

register_model("flow", NormalizingFlow, "RealNVP/Glow multi-scale normalizing flow p(x)")
register_model(
    "contrastive", ContrastiveEncoder, "SimCLR-style contrastive encoder (NT-Xent), for probes"
)
register_model(
    "sdae", StackedDenoisingAutoencoder, "stacked denoising autoencoders, trained layer-wise"
)
register_model("gan", GAN, "GAN: the LVM's decoder as generator, non-saturating loss")
register_model("vqvae", VQVAE, "VQ-VAE: discrete code grid, PixelCNN prior over the codes")


def _entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def _tuples(values: dict) -> dict:
    """TOML and JSON give lists where configs hold tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def config_fields(name: str) -> dict:
    """The settable config fields of a built-in model and their defaults."""
    entry = _entry(name)
    values = {
        f.name: f.default
        for f in dataclasses.fields(entry.cls.config_class)
        if f.name not in entry.fixed and f.name not in DERIVED
    }
    values.update(entry.defaults)
    return values


def settings_help(name: str) -> str:
    """The [model] settings of a built-in model, with defaults and help, for ``--help``."""
    docs = field_docs(_entry(name).cls.config_class)
    lines = [f"settings of {name!r} (--set model.KEY=VALUE, or [model] in a --config TOML):"]
    for key, default in config_fields(name).items():
        shown = "none" if default is None else json.dumps(default)
        lines.append(f"  {key} = {shown}" + (f"\n      {docs[key]}" if docs.get(key) else ""))
    return "\n".join(lines)


def build_model(name: str, image_shape, data_levels: int | None, settings: dict | None = None):
    """A built-in model sized for images of ``image_shape`` (C, H, W) with ``data_levels``
    levels; ``settings`` override its config defaults.

    Parameters
    ----------
    name : str
        A registered built-in model ("lvm", "pixelcnn", "flow", ...).
    image_shape : tuple of (int, int, int)
        (C, H, W) of the data.
    data_levels : int, optional
        Pixel levels of the data (None: continuous).
    settings : dict, optional
        Fields of the model's config (``lvmkit fit NAME --help`` lists them).

    Returns
    -------
    BuiltinModel

    Examples
    --------
    >>> from lvmkit.models import build_model
    >>> lvm = build_model("lvm", (1, 8, 8), 17, {"z_dim": 4})
    >>> lvm.sample(3).shape
    torch.Size([3, 1, 8, 8])
    """
    overrides = settings or {}
    fields = config_fields(name)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {unknown} for model {name!r}; valid: {sorted(fields)}"
        )
    entry = MODELS[name]
    values = _tuples({**fields, **overrides, **entry.fixed})
    return _construct(name, entry, entry.cls.config_for_data(image_shape, data_levels, values))


def rebuild(name: str, config: dict):
    """A model from its saved config dict.

    Parameters
    ----------
    name : str
    config : dict
        The model's config as a run saved it (``dataclasses.asdict``).

    Returns
    -------
    BuiltinModel
    """
    entry = _entry(name)
    return _construct(name, entry, entry.cls.config_class(**_tuples(config)))


def _construct(name: str, entry: ModelEntry, config):
    """``entry.cls(config)``; settings too large for this machine's memory are a ValueError."""
    try:
        return entry.cls(config)
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and "alloc" not in str(err):
            raise
        changed = {  # the settings that differ from the defaults: the likely culprits
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.default is not dataclasses.MISSING and getattr(config, f.name) != f.default
        }
        raise ValueError(
            f"model {name!r} with {changed} needs more memory than this machine has "
            f"({str(err).splitlines()[0][:200]}); choose smaller settings"
        ) from err
