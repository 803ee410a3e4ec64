"""A Docker engine for the image test, and the base images the build uses.

- `Engine.find_or_start()`: a Docker engine that answers (DOCKER_HOST or the
  default socket), else a `dockerd` this test starts as root with no bridge
  and no iptables rules (`--bridge=none --iptables=false`), its own socket,
  pidfile and exec root under a temporary run directory, and its images in
  `.tools/dockerd` so base images and build layers survive between runs.
  `Engine.close()` stops only a dockerd it started. `EngineUnavailable` says
  why there is none (the test skips with that message).
- `stand_in_bases()`: public registries may be out of reach, so the build can
  use stand-ins for its two base images: a Debian 12 minbase with Python from
  Debian packages and the host's CA bundle (`mmdebstrap`, then `docker
  import`), and an image holding `/uv` from the pinned uv wheel on PyPI. Each
  is tagged by a hash of what it is made from and built only when that tag is
  missing.

Every container and build here uses the host's network namespace: nothing is
put on a bridge, all traffic stays on loopback.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

TOOLS = ROOT / ".tools"
DOCKERD_DATA = TOOLS / "dockerd"
# What the stand-in Python base is made of (its tag is a hash of these and of the host's CA bundle).
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
STANDIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class EngineUnavailable(RuntimeError):
    """No container engine can be used here; the message says why and what would provide one."""


def pinned_uv_version() -> str:
    """The uv version deploy/local/bootstrap.sh installs (and the Dockerfile's uv image is tagged with)."""
    match = re.search(r"^UV_VERSION=(\S+)$", (ROOT / "deploy" / "local" / "bootstrap.sh").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError("deploy/local/bootstrap.sh does not set UV_VERSION")
    return match[1]


@dataclass
class Engine:
    """A docker client and the engine it talks to (`env` carries DOCKER_HOST when ours)."""

    client: str
    env: dict[str, str]
    started: subprocess.Popen[bytes] | None = None
    run_dir: Path | None = None
    server_version: str = ""
    log: Path | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def find_or_start(cls) -> Engine:
        client = shutil.which("docker")
        if client is None:
            raise EngineUnavailable("no docker client on PATH (as root, `make test` installs Debian's docker.io)")
        engine = cls(client, dict(os.environ))
        version = engine._server_version()
        if version:
            engine.server_version = version
            engine.notes.append(f"used the running Docker engine {version}")
            return engine
        engine._start_dockerd()
        return engine

    def _server_version(self) -> str:
        result = subprocess.run(
            [self.client, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
            check=False,
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    def _start_dockerd(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise EngineUnavailable(
                "no Docker engine is running and dockerd is not installed (as root, `make test` installs docker.io)"
            )
        if os.geteuid() != 0:
            raise EngineUnavailable("no Docker engine is running and starting dockerd needs root")
        DOCKERD_DATA.mkdir(parents=True, exist_ok=True)
        # A short path: the socket's must fit in 108 bytes wherever the clone is.
        self.run_dir = Path(tempfile.mkdtemp(prefix="catalog-dockerd-"))
        socket = self.run_dir / "docker.sock"
        self.log = self.run_dir / "dockerd.log"
        with self.log.open("wb") as log:
            self.started = subprocess.Popen(
                [
                    dockerd,
                    "--bridge=none",
                    "--iptables=false",
                    "--ip6tables=false",
                    f"--data-root={DOCKERD_DATA}",
                    f"--exec-root={self.run_dir / 'exec'}",
                    f"--pidfile={self.run_dir / 'dockerd.pid'}",
                    f"--host=unix://{socket}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.env["DOCKER_HOST"] = f"unix://{socket}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.started.poll() is not None:
                raise EngineUnavailable(
                    f"dockerd exited with {self.started.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            if socket.exists() and (version := self._server_version()):
                self.server_version = version
                self.notes.append(f"started dockerd {version} for this session (stopped at its end)")
                return
            time.sleep(0.2)
        self.close()
        raise EngineUnavailable("dockerd did not answer within 60 s")

    def close(self) -> None:
        """Stop the dockerd this test started (SIGTERM, then SIGKILL after 30 s); leave anyone else's alone."""
        if self.started is not None and self.started.poll() is None:
            self.started.send_signal(signal.SIGTERM)
            try:
                self.started.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.started.kill()
                self.started.wait(timeout=10)
        if self.run_dir is not None:
            # dockerd leaves its network namespace bind-mounted (exec/netns/default) after exit.
            for mount in _mounts_under(self.run_dir):
                subprocess.run(["umount", mount], capture_output=True, check=False)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `docker ARGS` against this engine; raises with docker's output when `check` and it fails."""
        result = subprocess.run(
            [self.client, *args], capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} ... failed ({result.returncode}):\n{result.stderr}")
        return result

    def has_image(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0


def _mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(directory)
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True)


@dataclass(frozen=True)
class Bases:
    """The build arguments that choose the Dockerfile's base images, and what they are."""

    build_args: dict[str, str]
    description: str


def stand_in_bases(engine: Engine, workdir: Path) -> Bases:
    """Stand-ins for PYTHON_IMAGE and UV_IMAGE, built (about a minute) unless already tagged."""
    python_tag = _python_stand_in(engine, workdir)
    uv_tag = _uv_stand_in(engine, workdir)
    python = engine.docker("run", "--rm", "--network", "host", python_tag, "python3", "--version").stdout.strip()
    return Bases(
        {"PYTHON_IMAGE": python_tag, "UV_IMAGE": uv_tag},
        f"stand-in bases (public registries unreachable): {python_tag} = Debian {DEBIAN_SUITE} minbase with "
        f"{python} from Debian packages and the host's CA bundle; {uv_tag} = /uv from the uv wheel on PyPI",
    )


def _python_stand_in(engine: Engine, workdir: Path) -> str:
    recipe = "\n".join(
        [DEBIAN_SUITE, "minbase", *DEBIAN_PACKAGES, hashlib.sha256(HOST_CA_BUNDLE.read_bytes()).hexdigest()]
    )
    tag = f"catalog-standin/python:{DEBIAN_SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if engine.has_image(tag):
        return tag
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise EngineUnavailable(
            "mmdebstrap is not installed (as root, `make test` installs it) and no stand-in is cached"
        )
    tarball = workdir / "python-base.tar"
    # The proxy's CA is in the host's bundle, not in Debian's: the build downloads through it.
    copy_ca = f'cp {HOST_CA_BUNDLE} "$1/etc/ssl/certs/ca-certificates.crt"'
    subprocess.run(
        [
            mmdebstrap,
            "--quiet",
            "--variant=minbase",
            f"--include={','.join(DEBIAN_PACKAGES)}",
            f"--customize-hook={copy_ca}",
            DEBIAN_SUITE,
            str(tarball),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    engine.docker("import", "--change", f"ENV PATH={STANDIN_PATH}", "--change", 'CMD ["python3"]', str(tarball), tag)
    tarball.unlink()
    return tag


def _uv_stand_in(engine: Engine, workdir: Path) -> str:
    version = pinned_uv_version()
    tag = f"catalog-standin/uv:{version}"
    if engine.has_image(tag):
        return tag
    download = workdir / "uv-wheel"
    uv = shutil.which("uv") or str(TOOLS / "uv" / "bin" / "uv")
    subprocess.run(
        [
            *(uv, "run", "--quiet", "--no-project", "--with", "pip", "python", "-m", "pip", "download", "--quiet"),
            *("--no-deps", "--only-binary=:all:", "-d", str(download), f"uv=={version}"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    [wheel] = download.glob("uv-*.whl")
    rootfs = workdir / "uv-rootfs"
    rootfs.mkdir()
    with zipfile.ZipFile(wheel) as archive:
        (rootfs / "uv").write_bytes(archive.read(f"uv-{version}.data/scripts/uv"))
    (rootfs / "uv").chmod(0o755)
    tarball = workdir / "uv.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "uv"], check=True)
    engine.docker("import", str(tarball), tag)
    return tag


def uv_binary(engine: Engine, uv_image: str, workdir: Path) -> Path:
    """The /uv of the uv image the build used, copied out (to check the runtime's packages with it)."""
    name = f"catalog-uv-{os.getpid()}"
    engine.docker("create", "--name", name, uv_image, "/uv")
    try:
        target = workdir / "uv"
        engine.docker("cp", f"{name}:/uv", str(target))
        return target
    finally:
        engine.docker("rm", "-f", name, check=False)
