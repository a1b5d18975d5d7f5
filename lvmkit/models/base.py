"""The contract every built-in model follows. The CLI, ``lvmkit.evaluate``, ``lvmkit.load_run``
and ``lvmkit.diagnose`` call only what is written here; they never guess from attributes.

A built-in model is an ``nn.Module`` with a dataclass config (``config_class``, saved with its
weights) and:

- ``model(*batch)`` / ``guide(*batch)``: Pyro programs over a batch, data under
  ``pyro.plate("data", N)``; ``batch`` is what ``prepare(data).batch(index)`` gives.
- ``prepare(data)``: ImageData -> the dataset it trains on, in the units its likelihood scores.
  The default reads ImageData for ``self.obs`` (an observation model) and returns ImageData.
- ``inputs(data)``: the tensors its per-image methods take for these images, ``(x,)`` or
  ``(x, y)``, in model units (default: ``(prepare(data).pixels(),)``); ``to_images(x)``: model
  units -> pictures (N, C, H, W) in [0, 1].
- ``data_kind``: what it scores ("continuous", "binary" or "levels"; the last two get bits/dim);
  by default ``self.obs.data_kind``.
- ``density``: how log p(x) is had: "exact" (``log_prob(*batch)`` in closed form), "bound"
  (``log_prob(*batch)`` a lower bound, reported as one, with ``bound`` saying which), "ais"
  (annealed from the prior: a model with no guide, such as a GAN under a noise model), "importance"
  (importance-sampled with its guide), or None (no density, e.g. autoencoders).
- Declared abilities, each off unless the class turns it on, each with its method:
  ``can_sample`` (``sample(n)`` in model units; ``sample_images(n)`` turns it into pictures),
  ``can_complete`` (``complete(x, known, *extra)``: x with the unknown elements filled in, in
  x's shape), ``can_reconstruct`` (``reconstruct(x)``, in x's shape), ``can_encode``
  (``encode(x)``: a torch Distribution over the code, its ``mean``, or a Categorical's
  ``probs``, is the representation), ``gaussian_code`` (p(z) = N(0, I) at site "z", ``encode(x)``
  an Independent diagonal Normal, ``decode_mean(z)`` in x's units: what KL per dimension,
  mutual information, the amortization gap and traversals need), ``posterior_guide`` (a
  guide q(z|x) over a batch (x,): PSIS k-hat and the posterior predictive check weigh it;
  implied by ``gaussian_code``),
  ``closed_form_em``.
- ``default_inference``, ``default_lr``, ``default_elbo`` / ``default_samples``: how ``lvmkit
  fit`` trains it ("adversarial": ``generator``, ``discriminator`` and ``z_dim``, the GAN's).

To add one: subclass, fill in the above, and ``lvmkit.models.register_model(name, cls, ...)``,
which checks that every declared ability has its method.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from lvmkit import data as lvdata
from lvmkit.distributions import observation_class


class BuiltinModel(nn.Module):
    """Base class of the built-in models; the defaults suit an image model with an ``obs``."""

    config_class: type  # the dataclass this model is built from
    can_sample = False
    can_complete = False
    can_reconstruct = False
    can_encode = False
    gaussian_code = False
    posterior_guide = False
    closed_form_em = False
    density: str | None = "importance"
    bound = ""  # for density = "bound": what log_prob gives, in words
    default_inference = "svi"  # the [fit] inference ``lvmkit fit`` uses: svi, em, adversarial
    default_lr = 1e-3
    default_elbo = "elbo"
    default_samples = 1

    @classmethod
    def config_for_data(cls, image_shape, levels: int | None, settings: dict):
        """The config for images of ``image_shape`` (C, H, W) with ``levels`` levels (None:
        continuous), from ``settings`` (config fields). A likelihood that scores levels takes
        the data's unless the settings name them."""
        values = dict(settings)
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        if "image_shape" in names:
            values["image_shape"] = tuple(image_shape)
        likelihood = values.get("likelihood")
        if "levels" in names and values.get("levels") is None and likelihood is not None:
            if observation_class(likelihood).data_kind == "levels":
                values["levels"] = levels
        return cls.config_class(**values)

    @property
    def data_kind(self) -> str:
        """What the likelihood scores: "continuous", "binary" (0/1) or "levels" (integers)."""
        obs = getattr(self, "obs", None)
        if obs is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no observation model 'obs': set data_kind = "
                '"continuous", "binary" or "levels" on the class'
            )
        return obs.data_kind

    def prepare(self, data: lvdata.ImageData):
        """The dataset to train on: ImageData in the units this model's likelihood scores."""
        return prepare_images(data, self.obs)

    def inputs(self, data: lvdata.ImageData) -> tuple[Tensor, ...]:
        """The tensors ``complete`` / ``reconstruct`` / ``encode`` take for these images, in
        model units: ``(x,)`` here, where ``prepare`` gives ImageData."""
        return (self.prepare(data).pixels(),)

    def initialize(self, data, *, seed: int = 0) -> BuiltinModel:
        """Start from the (prepared) training data where the model can; by default nothing."""
        return self

    def model(self, *batch):
        raise NotImplementedError

    def guide(self, *batch):
        raise NotImplementedError

    def sample_images(self, n: int) -> Tensor:
        """n samples as pictures (n, C, H, W) in [0, 1]."""
        if not self.can_sample:
            raise ValueError(
                f"{type(self).__name__} cannot sample: it has no generative model of x (a "
                "representation learner); sample from a density model such as lvm or flow"
            )
        return self.to_images(self.sample(n))

    @property
    def picture_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one datapoint as a picture; vector data make one row."""
        shape = tuple(self.config.image_shape)
        return shape if len(shape) == 3 else (1, 1, math.prod(shape))

    def to_images(self, x: Tensor) -> Tensor:
        """Data in model units (N, ...) -> (N, C, H, W) in [0, 1] (a continuous density's
        draws, pixel noise and all, clipped to it)."""
        x = x.reshape(len(x), *self.picture_shape).float()
        return x / (self.config.levels - 1) if self.data_kind == "levels" else x.clamp(0, 1)

    def top_half_known(self, x: Tensor) -> Tensor:
        """A mask shaped like x, True on the top half of each picture: what a completion is
        given."""
        known = torch.zeros(len(x), *self.picture_shape, dtype=torch.bool, device=x.device)
        known[..., : self.picture_shape[1] // 2, :] = True
        return known.reshape(x.shape)

    def log_prob(self, *batch) -> Tensor:
        """Exact log p(x) per datapoint (N,), for ``density = "exact"``; a lower bound on it
        for ``density = "bound"``."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form log p(x)")


def check_builtin(model, data, what: str, instead: str) -> None:
    """ValueError unless ``model`` is a BuiltinModel and ``data`` ImageData, as ``what`` (a
    function's name) needs; ``instead`` says what serves a user's own model and guide."""
    if not isinstance(model, BuiltinModel):
        raise ValueError(
            f"{what} takes a built-in model (lvmkit.models.BuiltinModel), got "
            f"{type(model).__name__}; for your own model and guide use {instead}"
        )
    if not isinstance(data, lvdata.ImageData):
        raise ValueError(
            f"{what} takes ImageData, got {type(data).__name__}; wrap images as "
            "lvmkit.data.ImageData(x, levels=...)"
        )


def prepare_unit_pixels(data: lvdata.ImageData, what: str) -> lvdata.ImageData:
    """Pixels in [0, 1] for a continuous density of images that is not an observation model
    (``what``: "a flow", "a GAN"): discrete data dequantized (a fresh draw every batch),
    continuous data checked to lie in [0, 1]."""
    lo, hi = float(data.x.min()), float(data.x.max())
    if data.levels is None and not 0 <= lo <= hi <= 1:
        raise ValueError(
            f"{data.name}: continuous pixels span [{lo:g}, {hi:g}]; {what} models pixels in "
            "[0, 1]: rescale them (lvmkit.data.scale)"
        )
    return prepare_images(data, SimpleNamespace(name=what, data_kind="continuous"))


def prepare_images(data: lvdata.ImageData, obs) -> lvdata.ImageData:
    """The data in the units the observation model ``obs`` scores: [0, 1) for continuous
    likelihoods (discrete data dequantized, so that the density bounds the discrete
    likelihood), {0, 1} for binary ones, integer levels for level likelihoods."""
    if obs.data_kind == "continuous":
        if data.dequantized:
            return data
        if data.levels is not None:
            return lvdata.dequantize(data)
        lo, hi = float(data.x.min()), float(data.x.max())
        if lo >= 0 and hi > 2:  # unscaled pixel values would train a unit-scale model to noise
            raise ValueError(
                f"{data.name}: continuous pixels span [{lo:g}, {hi:g}]; the '{obs.name}' "
                "likelihood expects [0, 1]: divide by the maximum value, or declare discrete "
                "data's levels (e.g. ImageData(x.round(), levels=256) for 8-bit images)"
            )
        return data
    if obs.data_kind == "binary":
        return data if data.levels == 2 else lvdata.binarize(data)
    if data.levels is None:
        raise ValueError(
            f"the '{obs.name}' likelihood needs discrete data with declared levels; "
            f"{data.name} is continuous: quantize it (lvmkit.data.quantize)"
        )
    return data
