"""The README's set-up commands and quickstart stay true."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_ci_runs_the_readme_test_command():
    setup = re.search(r"## Set-up: two commands.*?```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(setup) == 2 and setup[0].endswith("accelerate launch examples/train.py")
    test_command = setup[1].split("&&")[-1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci_lines[-1] == test_command, (ci_lines[-1], test_command)


def test_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README-quickstart", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "my-prompts" / "adapter_model.safetensors").exists()
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("[") and printed.count("'") == 4  # two predicted class names
