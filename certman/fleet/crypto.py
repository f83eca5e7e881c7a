"""Private keys at rest in the fleet store: AES-256-GCM with a key file the fleet shares.

The store never holds a plaintext key. Each object is ``b"CMF1" || nonce(12) || ciphertext+tag``
(NIST SP 800-38D; a random 96-bit nonce per encryption, one key for few objects). The associated
data binds the ciphertext to its object name, so a blob copied to another key id fails to
decrypt instead of installing the wrong key.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from certman.errors import CertmanError, ConfigError

MAGIC = b"CMF1"
NONCE = 12


def load_fleet_key(path: Path) -> bytes:
    """32 bytes: the file holds them raw, hex (64 characters) or base64 (``openssl rand``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the fleet key file: {exc.strerror}") from None
    if len(data) == 32:
        return data
    text = data.strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(text.decode("ascii"))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            continue
        if len(key) == 32:
            return key
    raise ConfigError(
        f"{path}: expected a 256-bit fleet key (32 raw bytes, 64 hex digits or base64; "
        "make one with `openssl rand -base64 32`)"
    )


def encrypt(key: bytes, plaintext: bytes, name: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, name.encode())


def decrypt(key: bytes, blob: bytes, name: str) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE + 16:
        raise CertmanError(f"{name}: not an encrypted fleet key object")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(MAGIC) + NONCE :], name.encode())
    except InvalidTag:
        raise CertmanError(
            f"{name}: cannot decrypt (another fleet key file, or the object was altered)"
        ) from None
