"""Every tutorial notebook runs, at smoke size (the ``CI`` environment variable), through
nbclient, as Jupyter would run it; ``make tutorials`` runs them at full size."""

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import run_two_at_a_time

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.ipynb"))
# One notebook, executed in a kernel of its own and written to argv[3] with its outputs.
EXECUTE = (
    "import sys, nbformat\n"
    "from nbclient import NotebookClient\n"
    "nb = nbformat.read(sys.argv[1], as_version=4)\n"
    "NotebookClient(nb, timeout=600, resources={'metadata': {'path': sys.argv[2]}}).execute()\n"
    "nbformat.write(nb, sys.argv[3])\n"
)


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 1


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Every tutorial executed at smoke size, two at a time: {stem: (future, written path)}."""
    folder = tmp_path_factory.mktemp("tutorials")
    commands, written = {}, {}
    for path in TUTORIALS:
        (folder / path.stem).mkdir()
        written[path.stem] = folder / f"{path.stem}.ipynb"
        argv = [sys.executable, "-c", EXECUTE, str(path), str(folder / path.stem)]
        commands[path.stem] = [*argv, str(written[path.stem])]
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1"}
    futures = run_two_at_a_time(commands, env=env, timeout=900)
    return {stem: (futures[stem], written[stem]) for stem in futures}


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_at_smoke_size(executed, path):
    future, written = executed[path.stem]
    done = future.result()
    assert done.returncode == 0, done.stderr[-3000:]
    notebook = nbformat.read(written, as_version=4)
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    # the stored outputs are the full-size run's: every code cell has been run
    stored = nbformat.read(path, as_version=4)
    assert all(c.execution_count for c in stored.cells if c.cell_type == "code")


def test_stored_outputs_carry_no_paths_of_the_machine_that_ran_them():
    machine = re.compile(r"/work/|/home/|/root/|/tmp/|/Users/|\.venv|site-packages")
    for path in TUTORIALS:
        for cell in nbformat.read(path, as_version=4).cells:
            for output in cell.get("outputs", []):
                text = "".join(output.get("text", "")) + "".join(
                    "".join(v) for k, v in output.get("data", {}).items() if k.startswith("text")
                )
                found = machine.search(text)
                assert not found, f"{path.name}: {text[max(0, found.start() - 60):][:160]}"


def test_each_tutorial_opens_with_what_it_compares_and_what_it_finds():
    for path in TUTORIALS:
        first = "".join(nbformat.read(path, as_version=4).cells[0].source)
        assert "**What it compares.**" in first and "**What it finds.**" in first, path.name
