"""Looking inside fitted models: plots (and, later, posteriors and their diagnostics)."""

from lvmkit.diagnostics.plots import save_image_grid, save_loss_curve, save_reconstructions

__all__ = ["save_image_grid", "save_loss_curve", "save_reconstructions"]
