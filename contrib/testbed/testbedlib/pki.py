"""Throwaway keys and certificates made with the openssl command."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from .proc import run

EC_P256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def make_ca(key: Path, cert: Path, name: str) -> None:
    run(
        [
            "openssl", "req", "-x509", *EC_P256, "-keyout", str(key), "-out", str(cert),
            "-days", "30", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ]
    )  # fmt: skip


def make_server_cert(
    key: Path, cert: Path, common_name: str, san: str, issuer: tuple[Path, Path] | None = None
) -> None:
    """An ECDSA P-256 server certificate; self-signed unless `issuer` = (CA cert, CA key)."""
    signer = ["-CA", str(issuer[0]), "-CAkey", str(issuer[1])] if issuer else []
    run(
        [
            "openssl", "req", "-x509", *EC_P256, *signer, "-keyout", str(key),
            "-out", str(cert), "-days", "30", "-subj", f"/CN={common_name}",
            "-addext", f"subjectAltName={san}",
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "extendedKeyUsage=serverAuth",
        ]
    )  # fmt: skip


def spki_sha256(cert: Path) -> str:
    """The data of a TLSA 3 1 1 record (RFC 6698 2.1): SHA-256 of the DER SubjectPublicKeyInfo."""
    pem = run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"])
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "DER"],
        input=pem.encode(),
        capture_output=True,
        check=True,
    ).stdout
    return hashlib.sha256(der).hexdigest()
