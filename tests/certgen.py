"""Throwaway PKI for tests: a CA, an intermediate and leaves, as cryptography objects and PEM."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes as PrivateKey,
)
from cryptography.x509.oid import NameOID

from certman.config.schema import CertificateConfig, Challenge, DaneConfig, InstallConfig, Layout
from certman.keys import generate_key, private_key_pem
from certman.model import KeyType


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class Issued:
    key: PrivateKey
    cert: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def issue(
    cn: str,
    *,
    key: PrivateKey | None = None,
    key_type: KeyType = KeyType.ECDSA_P256,
    issuer: Issued | None = None,
    ca: bool = False,
    sans: tuple[str, ...] = (),
    days: int = 30,
) -> Issued:
    """A certificate for ``cn`` signed by ``issuer`` (self-signed when None)."""
    key = key or generate_key(key_type)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans or not ca:
        names = sans or (cn,)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    signer = issuer.key if issuer else key
    cert = builder.sign(signer, hashes.SHA256())
    return Issued(key, cert)


@dataclass(frozen=True)
class Pki:
    root: Issued
    intermediate: Issued

    def leaf(
        self, cn: str, key_type: KeyType = KeyType.ECDSA_P256, sans: tuple[str, ...] = ()
    ) -> Issued:
        return issue(cn, key_type=key_type, issuer=self.intermediate, sans=sans)

    def fullchain_pem(self, leaf: Issued) -> bytes:
        """Leaf then intermediate: what a server sends (the root stays out)."""
        return leaf.cert_pem + self.intermediate.cert_pem


def make_pki(name: str = "Test") -> Pki:
    root = issue(f"{name} Root", ca=True)
    intermediate = issue(f"{name} Intermediate", issuer=root, ca=True)
    return Pki(root, intermediate)


def fixed_ec_key(secret: int = 0x1234567890ABCDEF) -> ec.EllipticCurvePrivateKey:
    """A P-256 key from a fixed scalar: the same key, hence the same SPKI, on every run."""
    return ec.derive_private_key(secret, ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def certificate_config(
    directory: Path,
    *,
    name: str = "mx",
    layout: Layout = Layout.CHAIN_FILES,
    key_types: tuple[KeyType, ...] = (KeyType.ECDSA_P256,),
    set_parameters: bool = True,
    dane: DaneConfig | None = None,
    domains: tuple[str, ...] = ("mx1.dane.test",),
) -> CertificateConfig:
    """A certificate's configuration as config.parse would build it, for the parts store uses."""
    return CertificateConfig(
        name=name,
        domains=domains,
        key_types=key_types,
        challenge=Challenge.DNS01,
        dns_provider="dns",
        zone_providers={},
        http=None,
        dane=dane,
        install=InstallConfig(layout, directory, set_parameters),
        renew_fraction=None,
        use_ari=True,
        profile=None,
    )
