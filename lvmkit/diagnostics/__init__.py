"""Looking inside fitted models: representations, plots."""

from lvmkit.diagnostics.plots import save_image_grid, save_loss_curve, save_reconstructions
from lvmkit.diagnostics.representation import encode, linear_probe

__all__ = ["encode", "linear_probe", "save_image_grid", "save_loss_curve", "save_reconstructions"]
