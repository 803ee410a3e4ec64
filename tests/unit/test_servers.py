"""deploy/local/servers.py: where throwaway and `make up` servers keep files other users must reach."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import servers  # deploy/local, put on sys.path by tests/conftest.py

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root hands directories to the postgres user")


@needs_root
def test_throwaway_servers_get_a_directory_postgres_can_reach_even_when_tmpdir_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "private"  # pytest's tmp_path is under a mode-0700 directory already
    private.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    workdir = servers.server_workdir("catalog-unit-")
    try:
        assert not workdir.is_relative_to(private)
        assert servers.reachable_by("postgres", workdir)
    finally:
        workdir.rmdir()


@needs_root
def test_a_spill_directory_is_refused_when_someone_else_could_have_planted_it(tmp_path: Path) -> None:
    stands_in_for = tmp_path / "run"
    planted = servers.spill_path(stands_in_for)
    planted.symlink_to(tmp_path)  # what another local user could leave in /var/tmp
    try:
        with pytest.raises(servers.MissingDependency, match="not a directory only root can write to"):
            servers.spill_directory(stands_in_for)
    finally:
        planted.unlink()
    made = servers.spill_directory(stands_in_for)
    try:
        assert made == planted
        assert (made.stat().st_uid, made.stat().st_mode & 0o777) == (0, 0o755)
    finally:
        made.rmdir()
