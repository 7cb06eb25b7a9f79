"""The README's two commands are the ones the project really runs."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)[:2]


def test_ci_runs_the_readme_test_command():
    serve, test = _commands()
    assert "python -m service" in serve and "requirements.txt" in serve
    assert "pytest" in test
    assert test in (ROOT / ".ci" / "run").read_text()
