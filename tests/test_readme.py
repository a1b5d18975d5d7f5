import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


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

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (code,) = [textwrap.dedent(b) for b in blocks if "lvmkit.em(em, x)" in b]
    code = code.replace("lr=0.05)", "lr=0.05, progress=False)")
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    em, svi, x = namespace["em"], namespace["svi"], namespace["x"]
    assert abs(float(em.log_prob(x).mean() - svi.log_prob(x).mean())) < 0.05
