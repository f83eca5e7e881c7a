"""Values every layer shares: key types, the keys and certificates certman knows.

Imports nothing from certman.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class KeyType(StrEnum):
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa")


@dataclass(frozen=True)
class KeyInfo:
    """A key certman knows, by the SHA-256 of its SubjectPublicKeyInfo (what 3 1 1 publishes)."""

    id: str
    key_type: KeyType
    spki_sha256: str
    created: float
    adopted_from: str | None = None  # the file it was found in, for keys certman did not make

    @staticmethod
    def make_id(key_type: KeyType, spki_sha256: str) -> str:
        return f"{key_type.value}-{spki_sha256[:16]}"


@dataclass(frozen=True)
class CertInfo:
    """The certificate served (or staged) for one key."""

    key_id: str
    serial: str
    not_before: float
    not_after: float
    ari_id: str | None
    path: str  # the full chain in certs/
