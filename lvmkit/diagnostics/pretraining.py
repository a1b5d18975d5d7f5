"""Greedy layer-wise pretraining against a random start: a stack of denoising autoencoders
initialises a deep sigmoid MLP, trained end to end; compared with the same net from a random
start and a ReLU net from a random start. What made deep nets trainable before ReLU, and why
ReLU (and batch norm) made it unnecessary. Every fit runs through ``lvmkit.fit`` (the loop)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import torch
from torch import Tensor

from lvmkit.diagnostics.quality import check_unit_pixels
from lvmkit.diagnostics.representation import linear_probe
from lvmkit.inference.fit import fit
from lvmkit.models.stacked import Classifier, StackedConfig, StackedDenoisingAutoencoder


@dataclass
class PretrainingComparison:
    """Per start ("pretrained" sigmoid, "random" sigmoid, "relu" random): the training loss
    per epoch (nats per image), the test accuracy after training, and the linear-probe
    accuracy of the top layer's codes before any supervised training.

    Parameters
    ----------
    losses : dict of str to list of float
    test_accuracy : dict of str to float
    probe_before : dict of str to float
    """

    losses: dict[str, list[float]] = field(default_factory=dict)
    test_accuracy: dict[str, float] = field(default_factory=dict)
    probe_before: dict[str, float] = field(default_factory=dict)


def compare_pretraining(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *,
    widths: tuple[int, ...] = (256, 256, 256), epochs: int = 20, pretrain_epochs: int = 30,
    noise: float = 0.25, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
) -> PretrainingComparison:  # fmt: skip
    """The same classifier (``widths`` hidden layers) trained from three starts: sigmoid
    layers from a ``StackedDenoisingAutoencoder`` fitted on ``x_train`` (greedy layer-wise
    pretraining, Vincent et al. 2010), sigmoid layers at random, ReLU layers at random. Runs on
    the CPU.

    Parameters
    ----------
    x_train : Tensor of shape (N, D)
        Training inputs in [0, 1].
    y_train : Tensor of shape (N,)
        Their classes.
    x_test, y_test : Tensor of shape (M, D) and (M,)
        Where test accuracy is measured.
    widths : tuple of int
        The hidden layers.
    epochs : int
        Supervised epochs from each start.
    pretrain_epochs : int
        Epochs of the stack of denoising autoencoders.
    noise : float
        The share of inputs each denoising layer drops.
    batch_size, lr, seed
        As for ``fit``.

    Returns
    -------
    PretrainingComparison
        Per start ("pretrained", "random", "relu"): the training losses per epoch, the test
        accuracy, and a linear probe of the top hidden layer before supervised training.
    """
    check_unit_pixels("x_train", x_train)
    check_unit_pixels("x_test", x_test)
    classes = int(torch.cat([y_train, y_test]).max()) + 1
    found = PretrainingComparison()
    for start in ("pretrained", "random", "relu"):
        torch.manual_seed(seed)
        net = Classifier(
            x_train.shape[1], widths, classes, "relu" if start == "relu" else "sigmoid"
        )
        if start == "pretrained":
            stack = StackedDenoisingAutoencoder(StackedConfig((x_train.shape[1],), widths, noise))
            pyro.clear_param_store()
            fit(stack.model, stack.guide, x_train, epochs=pretrain_epochs,
                batch_size=batch_size, lr=lr, seed=seed, progress=False, device="cpu")  # fmt: skip
            with torch.no_grad():
                for layer, pretrained in zip(net.hidden, stack.layers, strict=True):
                    layer.weight.copy_(pretrained.encode.weight)
                    layer.bias.copy_(pretrained.encode.bias)
        with torch.no_grad():
            found.probe_before[start] = linear_probe(net.codes(x_train), y_train, seed=seed)
        pyro.clear_param_store()
        result = fit(net.model, net.guide, (x_train, y_train), epochs=epochs,
                     batch_size=batch_size, lr=lr, seed=seed, progress=False,
                     device="cpu")  # fmt: skip
        found.losses[start] = result.losses
        with torch.no_grad():
            found.test_accuracy[start] = float((net(x_test).argmax(1) == y_test).float().mean())
    return found
