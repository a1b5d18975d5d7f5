"""Looking inside fitted models: posteriors, their diagnostics, representations, plots, and
``diagnose``, which builds a run's report."""

from lvmkit.diagnostics.convergence import convergence, convergence_plot, sample_counts
from lvmkit.diagnostics.diagnose import SECTIONS, diagnose
from lvmkit.diagnostics.gaussian_code import (
    AmortizationGap,
    amortization_gap,
    kl_per_dimension,
    mutual_information,
)
from lvmkit.diagnostics.plots import (
    bars,
    histogram,
    image_grid,
    latent_space,
    loss_curve,
    reconstructions,
    save_figure,
)
from lvmkit.diagnostics.posteriors import (
    MIN_PSIS_DRAWS,
    khat_bands,
    mcmc_inference_data,
    posterior,
    psis_khat,
)
from lvmkit.diagnostics.pretraining import PretrainingComparison, compare_pretraining
from lvmkit.diagnostics.quality import (
    SampleQuality,
    frechet_distance,
    inception_score,
    sample_quality,
)
from lvmkit.diagnostics.report import Report, Section
from lvmkit.diagnostics.representation import active_units, encode, linear_probe, probe_problem

__all__ = [
    "MIN_PSIS_DRAWS",
    "SECTIONS",
    "AmortizationGap",
    "PretrainingComparison",
    "Report",
    "SampleQuality",
    "Section",
    "active_units",
    "amortization_gap",
    "bars",
    "compare_pretraining",
    "convergence",
    "convergence_plot",
    "diagnose",
    "encode",
    "frechet_distance",
    "histogram",
    "image_grid",
    "inception_score",
    "khat_bands",
    "kl_per_dimension",
    "latent_space",
    "linear_probe",
    "loss_curve",
    "mcmc_inference_data",
    "mutual_information",
    "sample_quality",
    "posterior",
    "probe_problem",
    "psis_khat",
    "reconstructions",
    "sample_counts",
    "save_figure",
]
