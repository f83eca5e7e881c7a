"""Private keys: generation, PEM I/O and the SubjectPublicKeyInfo digests TLSA records use."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from certman.errors import CertmanError
from certman.fsutil import atomic_write
from certman.model import KeyType

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
        PublicKeyTypes,
    )

    PrivateKey = CertificateIssuerPrivateKeyTypes


def generate_key(kind: KeyType) -> PrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if kind.is_rsa:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind.value[3:]))
    curve = ec.SECP256R1() if kind is KeyType.ECDSA_P256 else ec.SECP384R1()
    return ec.generate_private_key(curve)


def key_type_of(key: PrivateKey) -> KeyType:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        return KeyType(f"rsa{key.key_size}")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": KeyType.ECDSA_P256, "secp384r1": KeyType.ECDSA_P384}[key.curve.name]
    raise CertmanError(f"unsupported key type {type(key).__name__}")


def private_key_pem(key: PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes, where: str) -> PrivateKey:
    """Parse an unencrypted PEM private key; ``where`` names its file in the error."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertmanError(f"{where}: not a usable PEM private key ({exc})") from None
    return key  # type: ignore[return-value]


def read_private_key(path: Path) -> PrivateKey:
    try:
        return load_private_key(path.read_bytes(), str(path))
    except OSError as exc:
        raise CertmanError(f"{path}: cannot read private key: {exc.strerror}") from None


def write_private_key(path: Path, key: PrivateKey) -> None:
    """0600 from the first byte, fsync'd, renamed into place."""
    atomic_write(path, private_key_pem(key), mode=0o600)


def spki_der(public_key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_sha256(public_key: PublicKeyTypes) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo: the data of a TLSA 3 1 1 record."""
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def cert_spki_sha256(cert: x509.Certificate) -> str:
    return spki_sha256(cert.public_key())


def load_pem_chain(pem: bytes, where: str) -> list[x509.Certificate]:
    """All certificates in a PEM bundle, leaf first; an error names ``where`` if there are none."""
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CertmanError(f"{where}: no valid PEM certificate ({exc})") from None
    return chain
