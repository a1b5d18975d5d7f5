import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the README and the user guide it links to: the commands and examples they show run
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs/guide").glob("*.md"))]


def blocks(language: str) -> list[str]:
    found = (re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.S) for page in PAGES)
    return [block for page in found for block in page]


def test_readme_example_runs(tmp_path):
    """The README's ten-line example, with fewer epochs, must run as written."""
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    code = code.replace("epochs=50", "epochs=3").replace(
        'checkpoint_dir="runs/mine"', f'checkpoint_dir="{tmp_path}", progress=False'
    )
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert len(namespace["result"].losses) == 3
    assert (tmp_path / "checkpoint.pt").is_file()


def test_readme_em_and_svi_snippet_runs_and_agrees():
    """The README's EM-vs-SVI snippet runs as written, and the two fits of the same mixture
    reach the same log-likelihood."""
    import textwrap

    (code,) = [textwrap.dedent(b) for b in blocks("python") if "lvmkit.em(em, x)" in b]
    code = code.replace("lr=0.05)", "lr=0.05, progress=False)")
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    em, svi, x = namespace["em"], namespace["svi"], namespace["x"]
    assert abs(float(em.log_prob(x).mean() - svi.log_prob(x).mean())) < 0.05


def test_readme_command_lines_run(tmp_path, monkeypatch, capsys):
    """Every `lvmkit ...` line of the README's and the guide's shell blocks, run as written but
    for fewer epochs.
    (The Quickstart's `make test` is what CI runs; `make demo` runs `lvmkit demo`, which
    test_cli runs.)"""
    import shlex

    import pytest

    from lvmkit.cli import main

    monkeypatch.chdir(tmp_path)
    lines = [line.split("#")[0].strip() for block in blocks("bash") for line in block.splitlines()]
    lines = list(dict.fromkeys(lines))  # a page repeating the README's commands runs them once
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("lvmkit ")]
    assert len(commands) >= 3
    for args in commands:
        fewer = {"50": "2", "60": "1", "100": "3"}  # epochs: resume still continues the run
        args = [
            fewer.get(a, a) if p == "--epochs" else a
            for p, a in zip([""] + args[:-1], args, strict=True)
        ]
        if args[-1] == "--help":
            with pytest.raises(SystemExit) as done:
                main(args)
            assert done.value.code == 0
        else:
            assert main(args + ["--no-progress"]) == 0, args
    assert (tmp_path / "runs" / "lvm" / "model.pt").is_file()


def test_the_guides_generative_families_example_runs():
    (code,) = [b for b in blocks("python") if "fit_adversarial(gan" in b]
    namespace = {}
    exec(compile(code, "docs/guide/models.md", "exec"), namespace)
    assert namespace["flow"].started and not namespace["gan"].training
