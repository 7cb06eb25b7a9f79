"""The README's commands are the ones the project really runs, and the docs' links resolve.

Every ```bash block of the README holds either one of the two set-up commands (run by .ci/run,
checked below), `curl` commands against the API (replayed in-process by
`test_readme_curl_commands_answer_2xx`), or `rimer` commands, which
tests/integration/test_cli_client.py::test_forecast_in_process_wide_and_long_csv runs with the same flags
(checked by `test_readme_rimer_commands_are_exercised`).
"""

from __future__ import annotations

import json
import re
import shlex
from urllib.parse import urlsplit

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 210
CLI_TEST = ROOT / "tests" / "integration" / "test_cli_client.py"  # runs `rimer forecast ... --plot ...`


def _blocks() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", README.read_text(), flags=re.S)


def _commands() -> list[str]:
    return _blocks()[:2]


def _block_commands(block: str) -> list[str]:
    """The commands of a bash block: a line starting with a program name begins one; lines after
    it that are neither comments nor a new command continue it (a trailing backslash, or a
    quoted JSON body spread over lines)."""
    commands: list[str] = []
    for line in block.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if re.match(r"(curl|rimer|python3|\.venv/)\b", stripped) or not commands:
            commands.append(stripped)
        else:
            commands[-1] = commands[-1].rstrip("\\").rstrip() + " " + stripped
    return [c.rstrip("\\").rstrip() for c in commands]


def _readme_commands() -> list[str]:
    return [c for block in _blocks()[2:] for c in _block_commands(block)]


def _parse_curl(command: str) -> tuple[str, str, dict | None, dict[str, str]]:
    """`curl -s [-X METHOD] localhost:8000/PATH [-H 'K: V'] [-d 'JSON'] [-o FILE]` ->
    method, path with query, JSON body, headers."""
    tokens = shlex.split(command, comments=True)
    assert tokens[0] == "curl", command
    method, body, url, headers = None, None, None, {}
    it = iter(tokens[1:])
    for tok in it:
        if tok == "-s":
            continue
        if tok == "-X":
            method = next(it)
        elif tok == "-H":
            key, _, value = next(it).partition(":")
            headers[key.strip()] = value.strip()
        elif tok == "-d":
            body = json.loads(next(it))
        elif tok == "-o":
            next(it)
        elif tok.startswith("localhost:8000/"):
            url = tok
        else:
            raise AssertionError(f"curl option the README test does not parse: {tok!r} in {command!r}")
    assert url is not None, command
    parts = urlsplit("http://" + url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return method or ("POST" if body is not None else "GET"), path, body, headers


def test_ci_runs_the_readme_test_command():
    serve, test = _commands()
    assert "python -m service" in serve and "requirements.txt" in serve
    assert "pytest" in test
    assert test in (ROOT / ".ci" / "run").read_text()


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; the detail belongs in docs/"


@pytest.mark.parametrize("doc", [README, ROOT / "ARCHITECTURE.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_point_to_existing_files(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # links inside code are not links
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # http(s), mailto: not files; an anchor within the page
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, f"{doc.name}: links to missing files: {missing}"


def test_every_readme_bash_command_is_known():
    """Beyond the two set-up commands, a README ```bash block holds only curl and rimer
    commands, which the tests below run."""
    commands = _readme_commands()
    assert commands, "the tour has no commands"
    for command in commands:
        assert command.startswith(("curl ", "rimer ")), f"not run by any test: {command!r}"
        if command.startswith("curl "):
            _parse_curl(command)  # parseable


def test_readme_curl_commands_answer_2xx():
    """Replays every curl command of the README, in order, against the app in-process."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    curls = [c for c in _readme_commands() if c.startswith("curl ")]
    assert len(curls) >= 5
    with TestClient(create_app(Settings())) as client:
        for command in curls:
            method, path, body, headers = _parse_curl(command)
            answer = client.request(method, path, json=body, headers=headers)
            assert 200 <= answer.status_code < 300, (command, answer.status_code, answer.text[:500])


def test_readme_rimer_commands_are_exercised():
    """The README's `rimer` commands parse, and every flag they use is one
    tests/integration/test_cli_client.py::test_forecast_in_process_wide_and_long_csv passes to the same
    subcommand (that test runs `rimer forecast` in-process with --h, --level, --out, --plot)."""
    from rimer_client import cli

    source = CLI_TEST.read_text()
    assert "def test_forecast_in_process_wide_and_long_csv" in source
    rimers = [c for c in _readme_commands() if c.startswith("rimer ")]
    assert rimers
    for command in rimers:
        args = shlex.split(command, comments=True)[1:]
        cli.parser().parse_args(args)  # exits (SystemExit) on an unknown flag
        assert args[0] == "forecast" and f'"{args[0]}"' in source
        for flag in (a for a in args if a.startswith("--")):
            assert f'"{flag}"' in source, f"{flag} of {command!r} is not exercised by {CLI_TEST.name}"


def test_readme_python_example_runs_against_a_live_server(default_server, tmp_path, monkeypatch):
    """The README's Python block, as written, against a real server (its URL swapped in)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.+?)\n```", text, flags=re.S)
    assert len(blocks) == 1
    code = blocks[0].replace("http://127.0.0.1:8000", default_server.url)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (our own README)
    fc = scope["fc"]
    assert list(fc.columns) == ["unique_id", "ds", "Rimer", "Rimer-lo-95", "Rimer-lo-80", "Rimer-hi-80",
                                "Rimer-hi-95"]
    assert len(fc) == 3 * 24 and (tmp_path / "fc.png").read_bytes()[:4] == b"\x89PNG"
