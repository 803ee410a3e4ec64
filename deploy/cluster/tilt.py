"""`make tilt`: Tilt, built from its pinned Go module, against the cluster of `make cluster`.

    make tilt                                   # tilt up; the UI at http://localhost:10350
    make tilt TILT_ARGS="ci"                    # every resource up once, then exit (0: all ready)
    make tilt TILT_ARGS="down --delete-namespaces"   # remove what Tilt deployed; the cluster stays
    make tilt TILT_ARGS="up -- --namespace dev-me --no-port-forwards"

What it sets up before running `tilt TILT_ARGS` in the repository:
- the Tilt binary: deploy/cluster/build.sh tilt (cached outside the clone, keyed by
  deploy/cluster/tools/tilt/go.mod and go.sum), with its web UI (see build.sh);
- KUBECONFIG: the kubeconfig `make cluster` wrote (.run/cluster/kubeconfig of this clone,
  or of the clone whose cluster runs here; context catalog-cluster, the only context the
  Tiltfile allows besides kind's);
- a Docker engine for the image builds (DOCKER_HOST, or the one the image test uses:
  a dockerd started as root with no bridge and no iptables rules, its images kept in
  .tools/dockerd, stopped when Tilt exits), and the stand-in base images the image test
  makes, because public registries are out of reach here (CATALOG_IMAGE_BASES=real
  builds from the Dockerfile's own bases instead);
- PATH: helm (`make tools`), kubectl and ctr from the cluster's build, uv.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fixtures.engine import Engine, stand_in_bases  # noqa: E402  (the image test's engine and bases)

# The kubeconfig `make cluster` writes: this clone's, else that of the clone whose cluster
# runs on this machine (there is one per machine; deploy/cluster records its owner), or
# the one CATALOG_CLUSTER_KUBECONFIG names.
OWNER = Path("/run/catalog-cluster/owner")


def _default_kubeconfig() -> Path:
    own = ROOT / ".run" / "cluster" / "kubeconfig"
    if own.exists() or not OWNER.exists():
        return own
    return Path(OWNER.read_text().strip()) / ".run" / "cluster" / "kubeconfig"


KUBECONFIG = Path(os.environ.get("CATALOG_CLUSTER_KUBECONFIG") or _default_kubeconfig())
CONTEXT = "catalog-cluster"
BUILD = ROOT / "deploy" / "cluster" / "build.sh"


def bin_dir(family: str) -> Path:
    """Where deploy/cluster/build.sh keeps (or will keep) the binaries of `family`."""
    out = subprocess.run(["bash", str(BUILD), "--print-bin", family], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def tilt_binary() -> Path:
    """The pinned Tilt, built on first use (progress on stderr) and cached by version."""
    subprocess.run(["bash", str(BUILD), "tilt"], check=True, stdout=sys.stderr)
    return bin_dir("tilt") / "tilt"


@contextmanager
def image_engine(workdir: Path) -> Iterator[tuple[Engine, str]]:
    """A Docker engine and the build arguments for the base images (stand-ins unless CATALOG_IMAGE_BASES=real)."""
    engine = Engine.find_or_start()
    try:
        if os.environ.get("CATALOG_IMAGE_BASES") == "real":
            args = ""
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            bases = stand_in_bases(engine, workdir)
            args = " ".join(f"--build-arg {name}={value}" for name, value in bases.build_args.items())
        yield engine, args
    finally:
        engine.close()


def environment(engine: Engine, build_args: str, kubeconfig: Path = KUBECONFIG) -> dict[str, str]:
    """What Tilt and the commands it runs (helm, kubectl, the image build) need in their environment."""
    if not kubeconfig.exists():
        raise SystemExit(f"tilt: no {kubeconfig}: start the cluster with `make cluster` first")
    uv = ROOT / ".tools" / "uv" / "bin"
    path = [ROOT / ".tools" / "bin", bin_dir("kubernetes"), bin_dir("containerd"), uv]
    return {
        **engine.env,
        "KUBECONFIG": str(kubeconfig),
        "CATALOG_IMAGE_BUILD_ARGS": build_args,
        "PATH": os.pathsep.join([*(str(p) for p in path), os.environ.get("PATH", "")]),
    }


def main(argv: list[str]) -> int:
    args = argv or ["up"]
    tilt = tilt_binary()
    with image_engine(ROOT / ".run" / "tilt" / "bases") as (engine, build_args):
        env = environment(engine, build_args)
        print(f"tilt: {tilt} {shlex.join(args)} (context {CONTEXT})", file=sys.stderr, flush=True)
        return subprocess.run([str(tilt), *args], cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
