"""The TLS files a Postfix service reads, audited: private key readable by others, key and
certificate not matching, a leaf without its chain, DH parameters below 2048 bits. Also the
``Finding`` value the whole audit (``certman.postfix.audit``) reports."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from certman.postfix.commands import split_list


@dataclass(frozen=True)
class Finding:
    """One problem: ``code`` is stable (for tests and monitoring), the rest is for a person."""

    code: str
    where: str  # "main.cf", "master.cf smtp/inet", or a file
    what: str
    why: str
    fix: str

    def line(self) -> str:
        return f"{self.where}: {self.what} ({self.why}); fix: {self.fix}"


# -- the files a service reads ---------------------------------------------------------------------


def service_files(values: Mapping[str, str], seen: set[str]) -> list[Finding]:
    """Findings for the key, certificate and DH files one service reads (each file once)."""
    queue = values.get("queue_directory", "/var/spool/postfix")
    findings: list[Finding] = []
    for key_path, cert_path in _pairs(values, queue):
        if f"{key_path}\0{cert_path}" in seen:
            continue
        seen.add(f"{key_path}\0{cert_path}")
        findings += _pair(key_path, cert_path)
    dh = values.get("smtpd_tls_dh1024_param_file", "")
    if dh and dh != "auto" and dh not in seen:
        seen.add(dh)
        findings += _dh_file(_abs(dh, queue))
    return findings


def _abs(path: str, queue: str) -> str:
    return path if path.startswith("/") else os.path.join(queue, path)


def _pairs(values: Mapping[str, str], queue: str) -> list[tuple[str, str]]:
    chain = split_list(values.get("smtpd_tls_chain_files", ""))
    if chain:
        return [(_abs(p, queue), _abs(p, queue)) for p in chain]
    pairs = []
    for cert_name, key_name in (
        ("smtpd_tls_cert_file", "smtpd_tls_key_file"),
        ("smtpd_tls_eccert_file", "smtpd_tls_eckey_file"),
    ):
        cert = values.get(cert_name, "")
        if cert:
            pairs.append((_abs(values.get(key_name) or cert, queue), _abs(cert, queue)))
    return pairs


_PEM = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\s*", re.S)


def _pair(key_path: str, cert_path: str) -> list[Finding]:
    """Key readable by others, key and certificate not matching, leaf without its chain."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    findings = []
    try:
        mode = Path(key_path).stat().st_mode
        key_data, cert_data = Path(key_path).read_bytes(), Path(cert_path).read_bytes()
    except OSError as exc:
        return [
            Finding(
                "tls-file-unreadable",
                exc.filename or key_path,
                f"cannot read: {exc.strerror}",
                "Postfix cannot offer TLS with this file",
                "point the setting at an existing file",
            )
        ]
    if mode & (stat.S_IROTH | stat.S_IRGRP):
        findings.append(
            Finding(
                "key-readable-by-others",
                key_path,
                f"private key file mode {stat.S_IMODE(mode):04o}",
                "any local user can read the server's private key (TLS_README: key files "
                "readable only by root)",
                f"chmod 600 {key_path}",
            )
        )
    keys = [m.group(0) for m in _PEM.finditer(key_data) if m.group(1).endswith(b"PRIVATE KEY")]
    certs = [m.group(0) for m in _PEM.finditer(cert_data) if m.group(1) == b"CERTIFICATE"]
    if not keys or not certs:
        return findings
    try:
        key = load_pem_private_key(keys[0], password=None)
        leaf = x509.load_pem_x509_certificate(certs[0])
    except (ValueError, TypeError):
        return findings
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        findings.append(
            Finding(
                "key-cert-mismatch",
                cert_path,
                f"the certificate does not belong to the private key in {key_path}",
                "every TLS handshake with this certificate fails",
                "install the matching key and certificate (`certman rollover NAME`)",
            )
        )
    if len(certs) == 1 and leaf.issuer != leaf.subject:
        findings.append(
            Finding(
                "chain-missing",
                cert_path,
                f"only the leaf certificate, issued by {leaf.issuer.rfc4514_string()}",
                "clients that check the chain (and DANE-TA 2 x x records) need the "
                "intermediates appended (TLS_README 'Server-side certificate')",
                f"append the CA's intermediate certificates to {cert_path}",
            )
        )
    return findings


def _dh_bits(data: bytes) -> int | None:
    """The prime's size in bits, None if ``data`` holds no PEM DH parameters. (cryptography
    warns that its FFDH support is deprecated; reading a size is all that is done here.)"""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cryptography.hazmat.primitives.asymmetric import dh
        from cryptography.hazmat.primitives.serialization import load_pem_parameters

        try:
            params = load_pem_parameters(data)
        except ValueError:
            return None
        if not isinstance(params, dh.DHParameters):
            return None
        return int(params.parameter_numbers().p.bit_length())


def _dh_file(path: str) -> list[Finding]:
    fix = "certman dhparams --now (or set smtpd_tls_dh1024_param_file to a 2048-bit file)"
    why = "Postfix falls back to its built-in group and logs a warning"
    try:
        bits = _dh_bits(Path(path).read_bytes())
    except OSError as exc:
        return [Finding("dh-file-unreadable", path, f"cannot read: {exc.strerror}", why, fix)]
    if bits is None:
        return [Finding("dh-file-unreadable", path, "not PEM DH parameters", why, fix)]
    if bits >= 2048:
        return []
    return [
        Finding(
            "dh-file-weak",
            path,
            f"{bits}-bit DH parameters",
            "finite-field DH below 2048 bits is breakable (Logjam; RFC 7919, TLS_README)",
            fix,
        )
    ]
