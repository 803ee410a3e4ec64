"""Certificates and kubeconfigs of the local cluster, made with the openssl CLI (stdlib only).

One CA signs every certificate: the API server's serving certificate (the node
address, the first Service address and the in-cluster names), the kubelet's
serving certificate, and one client certificate per identity the control plane
authorizes (the Node authorizer needs `system:node:<name>` in `system:nodes`).
The ServiceAccount token key is an RSA pair. Keys are ECDSA P-256, valid 30 days
(a cluster lives for a test run; `make cluster` makes a new set every time).
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "30"


@dataclass(frozen=True)
class Identity:
    """A client certificate: file stem, common name (user) and organizations (groups)."""

    stem: str
    cn: str
    groups: tuple[str, ...] = ()


def _openssl(*args: str, stdin: bytes | None = None) -> None:
    result = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def _subject(cn: str, groups: tuple[str, ...]) -> str:
    return "".join(f"/O={group}" for group in groups) + f"/CN={cn}"


def make_ca(pki: Path, stem: str = "ca", cn: str = "catalog-cluster-ca") -> None:
    """Writes `<stem>.key` and `<stem>.crt`, a self-signed CA (the cluster's, or the aggregation layer's)."""
    _key(pki / f"{stem}.key")
    _openssl(
        "req", "-x509", "-new", "-key", str(pki / f"{stem}.key"), "-subj", f"/CN={cn}",
        "-days", DAYS, "-out", str(pki / f"{stem}.crt"),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip


def sign(
    pki: Path, stem: str, cn: str, groups: tuple[str, ...] = (), *, server_names: tuple[str, ...] = (), ca: str = "ca"
) -> None:
    """Writes `<stem>.key` and `<stem>.crt`, a client certificate, or a serving one when `server_names` is set.

    `server_names` are IP addresses or DNS names, put in the subjectAltName; `ca` is the stem of the signing CA.
    """
    _key(pki / f"{stem}.key")
    csr = pki / f"{stem}.csr"
    _openssl("req", "-new", "-key", str(pki / f"{stem}.key"), "-subj", _subject(cn, groups), "-out", str(csr))
    if server_names:
        sans = ",".join(f"IP:{name}" if name.replace(".", "").isdigit() else f"DNS:{name}" for name in server_names)
        extensions = f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n"
    else:
        extensions = "extendedKeyUsage=clientAuth\n"
    extensions += "keyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n"
    ext_file = pki / f"{stem}.ext"
    ext_file.write_text(extensions)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki / f"{ca}.crt"), "-CAkey", str(pki / f"{ca}.key"),
        "-CAcreateserial", "-days", DAYS, "-extfile", str(ext_file), "-out", str(pki / f"{stem}.crt"),
    )  # fmt: skip
    csr.unlink()
    ext_file.unlink()


def service_account_keys(pki: Path) -> None:
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(pki / "sa.key"))
    _openssl("pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    (pki / "sa.key").chmod(0o600)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(pki: Path, stem: str, server: str, path: Path, *, cluster: str = "catalog-cluster") -> None:
    """A kubeconfig for the identity `stem` with the certificates embedded (it can be copied anywhere)."""
    user = stem
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {_b64(pki / "ca.crt")}
users:
- name: {user}
  user:
    client-certificate-data: {_b64(pki / f"{stem}.crt")}
    client-key-data: {_b64(pki / f"{stem}.key")}
contexts:
- name: {cluster}
  context: {{cluster: {cluster}, user: {user}}}
current-context: {cluster}
"""
    )
    path.chmod(0o600)
