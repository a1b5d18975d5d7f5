import json
import math
import sys
from pathlib import Path

import pytest
from conftest import run_two_at_a_time

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


SCRIPTS = [
    "svi_overhead.py",
    "gmm_em.py",
    "lvm_em_vs_svi.py",
    "ar_sampling.py",
    "likelihoods.py",
    "scaling.py",
    "threads.py",
    "ais_vs_is.py",
    "startup.py",
    "estimators.py",
    "quality.py",
]


@pytest.fixture(scope="module")
def smoke_runs():
    """Every benchmark's smoke run, started together, two at a time."""
    commands = {s: [sys.executable, str(BENCHMARKS / s), "--smoke"] for s in SCRIPTS}
    return run_two_at_a_time(commands, timeout=600)


def run(smoke_runs, script: str) -> list[dict]:
    done = smoke_runs[script].result()
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_smoke_runs_print_json(smoke_runs, script):
    rows = run(smoke_runs, script)
    if script == "svi_overhead.py":
        (row,) = rows
        contenders = {"torch", "floor", "pyro", "lvmkit", "lvmkit_jit"}
        assert row["same_loss"] is True and set(row["losses"]) == contenders
        assert all(row[f"{k}_over_torch"] > 0 for k in contenders - {"torch"})
        assert row["lvmkit_jit_note"] == "traced"  # jit="auto" runs this VAE from its trace
    elif script == "likelihoods.py":
        (row,) = rows
        assert 2.3 < row["rows"]["independent categorical"]["bits_per_dim"] < 2.6
        assert row["rows"]["PixelCNN-decoder LVM"]["active_units"] >= 0
    elif script == "ar_sampling.py":
        assert len(rows) == 6 and all(row["identical"] for row in rows)
        assert {row["net"] for row in rows} == {"gated", "transformer", "rnn"}
    elif script == "scaling.py":
        assert [row["workload"].split(",")[0] for row in rows] == ["SVI epoch", "EM iteration"]
        assert all(0 < row["efficiency"] for row in rows)
    elif script == "threads.py":
        assert [row["load"] for row in rows] == ["idle", "one core busy"]
        assert all(row["seconds_1_thread"] > 0 and row["seconds_auto"] > 0 for row in rows)
    elif script == "quality.py":
        trained = [r for r in rows if "seed" in r]
        names = {f"{r['library']}:{r['model']}" for r in trained}
        assert {"lvmkit:vae", "lvmkit:vamp_dreg", "pythae:vae", "pythae:iaf"} <= names
        assert all(math.isfinite(r["nll_is"]) and math.isfinite(r["nll_ais"]) for r in trained)
        assert all(r["nll_is"] > 0 for r in trained)  # NLLs in nats, positive for binary images
        assert sum("summary" in r for r in rows) == len(names)
    elif script == "ais_vs_is.py":
        (row,) = rows
        assert list(row["rows"]) == [
            "IS K=1", "IS K=10", "IS K=100", "AIS 16 chains x 5", "AIS 16 chains x 20"
        ]  # fmt: skip
        assert all(r["bits_per_dim"] > 0 and r["seconds"] > 0 for r in row["rows"].values())
        assert row["rows"]["IS K=1"]["mc_stderr"] is None  # one draw: no Monte Carlo error
    elif script == "lvm_em_vs_svi.py":
        (row,) = rows
        assert set(row) >= {"svi", "em_importance"} and row["svi"]["stderr"] > 0
    elif script == "estimators.py":
        assert [row["row"] for row in rows] == ["log_p", "iwae_step", "ais"]
        for row in (rows[0], rows[2]):  # the same estimator: the same value, near enough
            ours, theirs = row["mean_log_p"]
            assert abs(ours - theirs) < 0.01 * abs(theirs)
        assert all(row["lvmkit_over_torch"] > 0 for row in rows)
    elif script == "startup.py":
        (row,) = rows
        assert set(row["median_s"]) == {"lvmkit_help", "import_torch", "import_lvmkit",
                                        "import_pyro", "lvmkit_fit_loaded"}  # fmt: skip
        assert row["help_over_import_torch"] > 0 and row["import_lvmkit_over_import_pyro"] > 0
    else:
        fits, digits, memory = rows[:2], rows[2:4], rows[4]
        for row in fits:
            assert abs(row["sklearn_loglik"] - row["lvmkit_loglik"]) < 1e-4 * abs(
                row["sklearn_loglik"]
            )
        for row in digits:  # from scikit-learn's k-means start: scikit-learn's fit
            assert row["benchmark"] == "gmm_em_digits" and row["relative_difference"] < 1e-6
            assert row["iters"][0] == row["iters"][1]
        assert memory["benchmark"] == "gmm_em_memory" and memory["peak_rss_mib"] > 0
