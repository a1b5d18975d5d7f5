"""A loss traced into a graph of torch ops, so a step runs without the Pyro program's Python.

``make_fx(pre_dispatch=True)`` records the ops the loss ran (pre_dispatch keeps ``no_grad``
regions out of the gradient) and refuses a tensor read into Python. One trace per batch shape.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import pyro
import torch
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx

from lvmkit.inference.draws import PositionDraws

# Objectives whose Pyro implementation reads tensors into Python, which stops any trace.
UNTRACEABLE = {
    "meanfield": "Pyro's TraceMeanField_ELBO reads tensors into Python",
    "enum": "Pyro's TraceEnum_ELBO reads tensors into Python",
}


class TracedLoss:
    """``loss.differentiable_loss(model, guide, *batch)`` as a function of the parameters
    (``leaves``) and the batch, traced on first use for each batch signature.

    ``aside`` is a context manager that undoes what the code inside does to random streams and
    module buffers: the tracing run's draws are put back, so traced steps see the draws the
    model's own steps would. Whatever stops a trace turns jit off (``active`` becomes False,
    ``why`` says why) and the caller runs the model itself from then on: with a warning, or,
    when ``quiet``, silently where no step has run from a trace yet (nothing was computed
    differently).
    """

    def __init__(self, loss, model, guide, aside, *, quiet: bool = False):
        self.loss, self.model, self.guide, self.aside = loss, model, guide, aside
        self.active, self.quiet, self.why = True, quiet, None
        self.traced_steps = 0  # steps whose loss came from a trace
        self._traces: dict[tuple, torch.fx.GraphModule] = {}

    def get(self, leaves: list[Tensor], batch: tuple, keys: Tensor | None = None):
        """The traced loss for batches shaped like ``batch``, or None once jit is off; with
        ``keys`` (``draws.draw_keys``) the latents are drawn from them, an input of the trace:
        call it as ``trace(*leaves, *batch, keys)``."""
        if not self.active:
            return None
        if not all(isinstance(t, Tensor) for t in batch):
            return self.stop("a trace takes tensor arguments only")
        extra = () if keys is None else (keys,)
        key = (len(leaves), *((t.shape, t.dtype, t.device) for t in (*batch, *extra)))
        if key not in self._traces:

            def loss_fn(*inputs):
                args = inputs[len(leaves) : len(leaves) + len(batch)]
                with PositionDraws(inputs[-1]) if extra else nullcontext():
                    return self.loss.differentiable_loss(self.model, self.guide, *args)

            with self.aside(), pyro.validation_enabled(False):
                try:
                    self._traces[key] = make_fx(loss_fn, pre_dispatch=True)(*leaves, *batch, *extra)
                except Exception as err:  # whatever stops the trace, the model still runs
                    what = str(err).strip().split("\n")[0][:300]
                    if "value out of a tracing tensor" in what:
                        return self.stop("the model reads a tensor into Python (.item(), "
                                         "float(t), or a branch on a value)")  # fmt: skip
                    return self.stop(f"the step cannot be traced ({type(err).__name__}: {what})")
        return self._traces[key]

    def replay(self, trace, leaves: list[Tensor], batch: tuple, keys=None) -> Tensor:
        """The trace's loss, leaving random streams and buffers as they were: for ``check``."""
        with self.aside(), torch.no_grad():
            return trace(*leaves, *batch, *(() if keys is None else (keys,)))

    def check(self, traced: Tensor, loss: Tensor) -> None:
        """The trace must give the loss the model gives from the same draws; else jit stops."""
        loss = loss.detach()
        if not torch.allclose(traced, loss, rtol=1e-4, atol=1e-6):
            self.stop(
                f"the traced step gives batch loss {float(traced):.6g} where the model gives "
                f"{float(loss):.6g} from the same draws; the model keeps state outside "
                "tensors or branches on data, which a trace freezes"
            )

    @property
    def note(self) -> str:
        """How the steps ran: "traced", or "not traced: WHY" (and the traced steps before)."""
        if self.active:
            return "traced"
        ran = f" (after {self.traced_steps} traced steps)" if self.traced_steps else ""
        return f"not traced: {self.why}{ran}"

    def stop(self, why: str) -> None:
        if not self.quiet or self.traced_steps:
            setting = "jit='auto'" if self.quiet else "jit=True"
            ran = (
                f" after {self.traced_steps} steps ran from the trace" if self.traced_steps else ""
            )
            warnings.warn(f"{setting}: {why}{ran}. Running without jit from here on.", stacklevel=5)
        self.active, self.why = False, why
        self._traces.clear()
