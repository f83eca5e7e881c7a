"""The ACME account: its key, its registration, and the cached account URL (RFC 8555 §7.3).

The key lives at ``acme.account_key`` (0600, generated on first use and reused afterwards). The
account URL is cached in ``state_dir/acme/account.json`` together with the directory it belongs to;
the key never goes there. On a fresh state directory with an existing key, the account is looked
up with ``onlyReturnExisting`` (RFC 8555 §7.3.1) before a new one is registered.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certman.errors import AcmeError, CertmanError
from certman.fsutil import atomic_write
from certman.keys import generate_key, read_private_key, write_private_key

if TYPE_CHECKING:
    from acme import client as acme_client
    from josepy.jwa import JWASignature
    from josepy.jwk import JWK

    from certman.config import AcmeConfig
    from certman.keys import PrivateKey

ACCOUNT_FILE = "account.json"
LOCK_FILE = "account.lock"


class StaleAccountError(AcmeError):
    """The CA does not know the account the cached URL names (accountDoesNotExist)."""


def acme_state_dir(state_dir: Path) -> Path:
    return state_dir / "acme"


@contextmanager
def account_lock(state_dir: Path) -> Iterator[None]:
    """Serialize key creation and registration between concurrent certman runs (two
    certificates renewed at once must not register two accounts)."""
    directory = acme_state_dir(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def load_or_create_account_key(acme: AcmeConfig) -> tuple[PrivateKey, bool]:
    """The account key and whether it was created just now (then no account can exist yet)."""
    path = acme.account_key
    if path.exists():
        return read_private_key(path), False
    key = generate_key(acme.account_key_type)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        write_private_key(path, key)
    except OSError as exc:
        raise CertmanError(f"{path}: cannot write ACME account key: {exc.strerror}") from None
    return key, True


def jwk_and_alg(key: PrivateKey) -> tuple[JWK, JWASignature]:
    """The JWK and JWS algorithm for an account key (RFC 7518 §3.1: RS256, ES256, ES384)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from josepy.jwa import ES256, ES384, RS256
    from josepy.jwk import JWKEC, JWKRSA

    if isinstance(key, rsa.RSAPrivateKey):
        return JWKRSA(key=key), RS256
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": ES256, "secp384r1": ES384}.get(key.curve.name)
        if alg is not None:
            return JWKEC(key=key), alg
    raise CertmanError(f"unsupported ACME account key type {type(key).__name__}")


def read_cached_account(state_dir: Path, directory: str) -> str | None:
    """The cached account URL for ``directory``, or ``None`` (absent, unreadable, other CA)."""
    path = acme_state_dir(state_dir) / ACCOUNT_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("directory") != directory:
        return None
    url = data.get("account_url")
    return url if isinstance(url, str) and url.startswith(("https://", "http://")) else None


def save_cached_account(state_dir: Path, directory: str, url: str) -> None:
    """Atomically record the account URL; the directory URL says which CA it belongs to."""
    data = json.dumps({"directory": directory, "account_url": url}, indent=2) + "\n"
    atomic_write(acme_state_dir(state_dir) / ACCOUNT_FILE, data.encode(), mode=0o600)


def forget_cached_account(state_dir: Path) -> None:
    (acme_state_dir(state_dir) / ACCOUNT_FILE).unlink(missing_ok=True)


def use_account(client: acme_client.ClientV2, url: str) -> None:
    """Make the client sign with ``kid`` = the account URL (RFC 8555 §6.2)."""
    from acme import messages

    client.net.account = messages.RegistrationResource(body=messages.Registration(), uri=url)


def ensure_account(
    client: acme_client.ClientV2,
    acme: AcmeConfig,
    state_dir: Path,
    *,
    key_is_new: bool,
    progress: Callable[[str], None],
) -> str:
    """Set up ``client`` to act for the account and return its URL: from the cache, else by
    ``onlyReturnExisting`` lookup (unless the key is new), else by registering."""
    url = read_cached_account(state_dir, acme.directory)
    if url is None and not key_is_new:
        url = lookup_account(client, acme.directory)
        if url is not None:
            progress(f"acme: found existing account {url}")
    if url is None:
        url = register_account(client, acme)
        progress(f"acme: registered account {url}")
    if url != read_cached_account(state_dir, acme.directory):
        save_cached_account(state_dir, acme.directory, url)
    use_account(client, url)
    return url


def lookup_account(client: acme_client.ClientV2, server: str) -> str | None:
    """The URL of the account for the client's key, or ``None`` if the CA has none."""
    from acme import messages

    from certman.acme_client import acme_error, post

    client.net.account = None  # newAccount is signed with the JWK, never with a kid
    query = messages.NewRegistration(only_return_existing=True)
    try:
        response = post(client, client.directory["newAccount"], query)
    except messages.Error as exc:
        if exc.code == "accountDoesNotExist":
            return None
        raise acme_error(server, "account lookup (onlyReturnExisting)", exc) from None
    location = response.headers.get("Location")
    if not location:
        raise AcmeError(f"ACME server {server}: account lookup answered without a Location")
    return str(location)


def register_account(client: acme_client.ClientV2, acme: AcmeConfig) -> str:
    """Register with the contact address, the terms agreed, and EAB when configured (§7.3.4)."""
    from acme import errors as acme_errors
    from acme import messages

    from certman.acme_client import acme_error

    client.net.account = None
    registration = messages.NewRegistration.from_data(
        email=acme.email,
        terms_of_service_agreed=True,
        external_account_binding=external_account_binding(client, acme),
    )
    try:
        regr = client.new_account(registration)
    except acme_errors.ConflictError as exc:
        return str(exc.location)  # the key already has an account (RFC 8555 §7.3.1)
    except messages.Error as exc:
        what = "account registration"
        if exc.code == "externalAccountRequired":
            what += " (the CA requires [acme.eab] kid and hmac_key)"
        elif acme.eab is not None:
            what += f" with EAB kid {acme.eab.kid!r}"
        raise acme_error(acme.directory, what, exc) from None
    return str(regr.uri)


def external_account_binding(
    client: acme_client.ClientV2, acme: AcmeConfig
) -> dict[str, Any] | None:
    """The EAB JWS binding the account key to the CA's kid + HMAC key (RFC 8555 §7.3.4)."""
    if acme.eab is None:
        return None
    from acme import messages

    key = client.net.key
    if key is None:
        raise CertmanError("ACME client has no account key")
    try:
        binding: dict[str, Any] = messages.ExternalAccountBinding.from_data(
            account_public_key=key.public_key(),
            kid=acme.eab.kid,
            hmac_key=acme.eab.hmac_key.value,
            directory=client.directory,
        )
    except (ValueError, TypeError):
        # The secret itself never goes into the message.
        raise AcmeError(
            f"[acme.eab] hmac_key from {acme.eab.hmac_key.source}: not a base64url HMAC key"
        ) from None
    return binding
