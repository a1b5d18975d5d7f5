"""Run directories, written and read by the library (``lvmkit fit`` and the other commands only
call these): ``fit_run`` creates, resumes or refuses one; ``load_run`` opens a finished one;
``evaluate_run``, ``diagnose_run``, ``write_samples`` and ``write_completions`` add files."""

from lvmkit.runs.config import default_config, parse_settings, read_config, write_config
from lvmkit.runs.directory import Run, load_run, read_json, save_model
from lvmkit.runs.fitting import FittedRun, fit_run, run_config
from lvmkit.runs.pictures import write_completions, write_samples
from lvmkit.runs.scoring import diagnose_run, evaluate_run

__all__ = [
    "FittedRun",
    "Run",
    "default_config",
    "diagnose_run",
    "evaluate_run",
    "fit_run",
    "load_run",
    "parse_settings",
    "read_config",
    "read_json",
    "run_config",
    "save_model",
    "write_completions",
    "write_config",
    "write_samples",
]
