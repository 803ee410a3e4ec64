"""The cluster's own images, made here without a registry or a container engine (stdlib only).

- pause: `pause.c` from the pinned k8s.io/kubernetes module (build/pause/linux),
  compiled with `gcc -static`, alone in an image (as upstream's is `FROM scratch`).
- coredns: the CoreDNS binary from deploy/cluster/build.sh, alone in an image.

`oci_archive()` writes an OCI image layout as a tar that `ctr images import` reads:
one uncompressed layer, a config naming the entrypoint and user, a manifest, and
an index whose `io.containerd.image.name` annotation gives the image its name.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

PAUSE_VERSION = "3.10.1"  # build/pause/Makefile's TAG in Kubernetes v1.35


def _blob(out: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":")[1])
    info.size = len(data)
    info.mtime = 0
    out.addfile(info, io.BytesIO(data))
    return digest, len(data)


def _layer(files: dict[str, Path]) -> bytes:
    """An uncompressed layer holding `files` (path in image -> file on disk), executable, owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for name, source in sorted(files.items()):
            data = source.read_bytes()
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size = len(data)
            info.mode = 0o755
            info.mtime = 0
            layer.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def oci_archive(name: str, files: dict[str, Path], entrypoint: list[str], user: str, path: Path) -> None:
    """Writes the image `name` (e.g. localhost/catalog-cluster/pause:3.10.1) as an OCI layout tar at `path`."""
    layer = _layer(files)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": entrypoint, "User": user, "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    with tarfile.open(path, "w") as out:
        layer_digest, layer_size = _blob(out, layer)
        config_digest, config_size = _blob(out, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}
            ],
        }
        manifest_digest, manifest_size = _blob(out, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": manifest_size,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
        for member, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", json.dumps(index).encode()),
        ):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mtime = int(time.time())
            out.addfile(info, io.BytesIO(data))


def build_pause(source: Path, out: Path) -> None:
    """Compiles pause.c statically into `out` (what upstream's build/pause/Makefile does)."""
    command = ["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_VERSION}-catalog", "-o", str(out)]
    result = subprocess.run([*command, str(source)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"gcc could not build {source} (apt-get install gcc libc6-dev): {result.stderr.strip()}")
