"""Looking inside fitted models: representations, plots."""

from lvmkit.diagnostics.plots import save_image_grid, save_loss_curve, save_reconstructions
from lvmkit.diagnostics.representation import active_units, encode, linear_probe

__all__ = [
    "active_units",
    "encode",
    "linear_probe",
    "save_image_grid",
    "save_loss_curve",
    "save_reconstructions",
]
