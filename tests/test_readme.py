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
