"""A reader on a fresh clone finds every repository file that the README, docs/ or a comment names.

Scans README.md and docs/ (prose and relative links), every Markdown file's
relative links, the comments of the top-level Makefile, Dockerfile, Tiltfile
and pyproject.toml, and the comments and docstrings of the code and config
under service/, monitoring/, deploy/, tests/ and bench/ for paths that start at the
repository root (`service/...`, `deploy/...`, `monitoring/...`, `tests/...`,
`bench/...`, `docs/...`) and checks each one exists in the tree as it is now.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

from tests.fixtures.paths import ROOT

ROOTS = ("service", "monitoring", "deploy", "tests", "bench", "docs")
# A root-relative path: starts at one of ROOTS, not inside a longer word, URL or absolute path.
_PATH = re.compile(r"(?<![\w./:@-])((?:" + "|".join(ROOTS) + r")/[\w./-]*[\w/])")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HASH_COMMENT = re.compile(r"(?:^|\s)#(?!!)\s?(.*)$")
_CODE_SUFFIXES = {".yaml", ".yml", ".tpl", ".sh", ".template", ".conf", ".toml", ".txt"}
_CODE_NAMES = {"Makefile", "Dockerfile", "Tiltfile"}
_SKIP_DIRS = {".venv", ".tools", ".run", "__pycache__", ".git", "node_modules", ".mypy_cache", ".ruff_cache"}

# Paths that are named on purpose although they are not in the tree, each with its reason.
# (Patterns are skipped without an entry: a path followed by `*`, `{`, `<` or `$`.)
ALLOWED: dict[str, str] = {
    "service/NAME": "kubectl's `service/NAME` argument form (a Kubernetes Service), not a path",
}


def _files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not _SKIP_DIRS & set(path.relative_to(ROOT).parts):
            yield path


def _python_prose(text: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and docstring."""
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring and node.body:
                yield node.body[0].lineno, docstring


def _hash_comments(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), 1):
        match = _HASH_COMMENT.search(line)
        if match:
            yield number, match.group(1)


def _prose(path: Path) -> Iterator[tuple[int, str]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".py":
        yield from _python_prose(text)
    elif path.suffix == ".md":
        yield from enumerate(text.splitlines(), 1)
    elif path.suffix in _CODE_SUFFIXES or path.name in _CODE_NAMES:
        yield from _hash_comments(text)


def _named_paths(path: Path) -> Iterator[tuple[int, str]]:
    for number, text in _prose(path):
        for match in _PATH.finditer(text):
            if re.match(r"\.?[*{<$]", text[match.end() :]):
                continue  # a pattern (results/*.md, export_memory.{md,json}), not a path
            yield number, match.group(1).rstrip(".")


def _links(path: Path) -> Iterator[tuple[int, Path]]:
    """Relative Markdown links, resolved against the linking file's directory."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for match in _LINK.finditer(line):
            target = match.group(1).split("#", 1)[0]
            if target and not re.match(r"^[a-z]+:", target):
                yield number, (path.parent / target).resolve()


def _sources() -> list[Path]:
    top = [
        path
        for path in sorted(ROOT.iterdir())
        if path.is_file() and (path.name in _CODE_NAMES or path.suffix in {".md", ".toml"})
    ]
    found = [*top, *_files(ROOT / "docs")]
    for root in ROOTS:
        if root != "docs":
            found.extend(path for path in _files(ROOT / root) if "results" not in path.parts)
    return found


def test_every_path_the_docs_and_comments_name_exists() -> None:
    missing = []
    for source in _sources():
        for number, named in _named_paths(source):
            if named not in ALLOWED and not (ROOT / named).exists():
                missing.append(f"{source.relative_to(ROOT)}:{number}: {named}")
    assert missing == [], "named but not in the repository (fix the pointer or add to ALLOWED with a reason):\n" + (
        "\n".join(missing)
    )


def test_every_relative_markdown_link_resolves() -> None:
    broken = []
    for source in [ROOT / "README.md", *(p for p in _files(ROOT) if p.suffix == ".md")]:
        for number, target in _links(source):
            if not target.exists():
                broken.append(f"{source.relative_to(ROOT)}:{number}: {target}")
    assert broken == [], "\n".join(broken)


def test_the_scan_finds_paths_and_links_and_skips_what_is_not_one(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Reads service/slo.toml and deploy/nginx/."""\n'
        "# see monitoring/rules.py, not monitoring.coreos.com/v1, /work/shared/x, https://h/service/y or bench/*.py\n"
        "# writes bench/results/export_memory.{json,md}\n"
        "x = 'service/not_in_a_comment.py'\n"
    )
    assert [named for _, named in _named_paths(sample)] == ["monitoring/rules.py", "service/slo.toml", "deploy/nginx/"]
    doc = tmp_path / "doc.md"
    doc.write_text("[a](missing.md) [b](https://example.com/x.md) [c](#anchor) [d](sample.py#L1)\n")
    assert [target.name for _, target in _links(doc)] == ["missing.md", "sample.py"]
