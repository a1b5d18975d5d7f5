"""Looking inside fitted models: posteriors, their diagnostics, representations, plots."""

from lvmkit.diagnostics.plots import save_image_grid, save_loss_curve, save_reconstructions
from lvmkit.diagnostics.posteriors import (
    AmortizationGap,
    amortization_gap,
    khat_bands,
    kl_per_dimension,
    mcmc_inference_data,
    mutual_information,
    posterior,
    psis_khat,
)
from lvmkit.diagnostics.representation import active_units, encode, linear_probe

__all__ = [
    "AmortizationGap",
    "active_units",
    "amortization_gap",
    "encode",
    "khat_bands",
    "kl_per_dimension",
    "linear_probe",
    "mcmc_inference_data",
    "mutual_information",
    "posterior",
    "psis_khat",
    "save_image_grid",
    "save_loss_curve",
    "save_reconstructions",
]
