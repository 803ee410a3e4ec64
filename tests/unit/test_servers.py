"""deploy/local: where `make up` servers keep files other users reach; the database route `make up` gives."""

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


def test_make_up_with_pgbouncer_gives_the_pods_the_pooler_and_the_direct_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stack as local_stack  # noqa: PLC0415 - deploy/local/stack.py, on sys.path via tests/fixtures

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("RUN_DIR", str(tmp_path))
    monkeypatch.setenv("PGBOUNCER", "1")
    monkeypatch.setenv("PGBOUNCER_PORT", "16432")
    stack = local_stack.Stack.from_environment()
    stack.database_url = "postgresql://postgres@127.0.0.1:55432/catalog"
    assert stack.app_database_env() == {
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:16432/catalog",
        "DATABASE_POOL_MODE": "transaction",
        "DATABASE_DIRECT_URL": "postgresql://postgres@127.0.0.1:55432/catalog",
    }
    monkeypatch.setenv("PGBOUNCER", "0")
    assert local_stack.Stack.from_environment().pgbouncer is False


def test_make_up_refuses_a_replica_behind_pgbouncer_or_beside_a_server_it_did_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stack as local_stack  # noqa: PLC0415 - deploy/local/stack.py, on sys.path via tests/fixtures

    monkeypatch.setenv("RUN_DIR", str(tmp_path))
    monkeypatch.setenv("REPLICA", "1")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    stack = local_stack.Stack.from_environment()
    assert "target_session_attrs=read-write" in stack.both_hosts_url()
    for name, value in (("PGBOUNCER", "1"), ("DATABASE_URL", "postgresql://app@db.internal/catalog")):
        with monkeypatch.context() as patched:
            patched.setenv(name, value)
            with pytest.raises(local_stack.StackError, match="REPLICA=1 needs"):
                local_stack.Stack.from_environment()
