"""lvmkit: latent variable models as Pyro programs.

The names below are imported on first use (PEP 562), so ``import lvmkit`` and the ``lvmkit``
command start without loading torch, Pyro or the plotting and scikit-learn stacks until a
function needs them."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    **{
        package: f"lvmkit.{package}"
        for package in "core data nets distributions models inference diagnostics runs".split()
    },
    "diagnose": "lvmkit.diagnostics",
    "encode": "lvmkit.diagnostics",
    "linear_probe": "lvmkit.diagnostics",
    "posterior": "lvmkit.diagnostics",
    "Run": "lvmkit.runs",
    "load_run": "lvmkit.runs",
    "fit_run": "lvmkit.runs",
    **{
        name: "lvmkit.inference"
        for name in (
            "Algorithm CheckpointError FitResult GaussianMixtureEM LogLikelihood "
            "MLflowLogger NonFiniteLossError Sandwich TensorBoardLogger Trainer ais bdmc em "
            "evaluate fit log_likelihood nuts run"
        ).split()
    },
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'lvmkit' has no attribute {name!r}")
    module = importlib.import_module(_WHERE[name])
    value = module if _WHERE[name] == f"lvmkit.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
