"""The ACME account: its key, its registration, and the cached account URL (RFC 8555 §7.3).

The key lives at ``acme.account_key`` (0600, generated on first use and reused afterwards). The
account URL is cached in ``state_dir/acme/account.json`` together with the directory it belongs to;
the key never goes there. On a fresh state directory with an existing key, the account is looked
up with ``onlyReturnExisting`` (RFC 8555 §7.3.1) before a new one is registered.

``certman account rollover`` changes the account key (RFC 8555 §7.3.5): the new key is written
to ``<account_key>.new`` before the CA hears of it, and moved into place only once the CA has
taken it; the old key is kept as ``<account_key>.old``. ``certman account deactivate`` ends the
account (§7.3.6) and records that in the cache, so later runs say so instead of trying.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certman.errors import AcmeError, CertmanError, RetryLater
from certman.fsutil import atomic_write, fsync_dir, open_lock, private_dir
from certman.keys import generate_key, read_private_key, write_private_key

if TYPE_CHECKING:
    from acme import client as acme_client
    from josepy.jwa import JWASignature
    from josepy.jwk import JWK

    from certman.config.schema import AcmeConfig
    from certman.keys import PrivateKey
    from certman.model import KeyType

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
    private_dir(directory)
    with os.fdopen(open_lock(directory / LOCK_FILE), "r+b") as handle:
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


def _read_cache(state_dir: Path, directory: str) -> dict[str, Any] | None:
    path = acme_state_dir(state_dir) / ACCOUNT_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("directory") != directory:
        return None
    url = data.get("account_url")
    return data if isinstance(url, str) and url.startswith(("https://", "http://")) else None


def read_cached_account(state_dir: Path, directory: str) -> str | None:
    """The cached account URL for ``directory``, or ``None`` (absent, unreadable, other CA)."""
    data = _read_cache(state_dir, directory)
    return str(data["account_url"]) if data is not None else None


def deactivated_account(state_dir: Path, directory: str) -> str | None:
    """When ``certman account deactivate`` ended the cached account: the time it did, else None."""
    data = _read_cache(state_dir, directory)
    when = data.get("deactivated_at") if data is not None else None
    return when if isinstance(when, str) else None


def save_cached_account(
    state_dir: Path, directory: str, url: str, *, deactivated_at: str | None = None
) -> None:
    """Atomically record the account URL; the directory URL says which CA it belongs to."""
    record = {"directory": directory, "account_url": url}
    if deactivated_at is not None:
        record["deactivated_at"] = deactivated_at
    data = json.dumps(record, indent=2) + "\n"
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
    ``onlyReturnExisting`` lookup (unless the key is new), else by registering. An account
    ``certman account deactivate`` ended is refused here, before the CA refuses it."""
    # A key made just now has no account yet, whatever an old cache says.
    url = None if key_is_new else read_cached_account(state_dir, acme.directory)
    ended = None if key_is_new else deactivated_account(state_dir, acme.directory)
    if ended is not None:
        raise AcmeError(
            f"ACME account {url} at {acme.directory} was deactivated on {ended} (certman account "
            f"deactivate); to issue again, move {acme.account_key} away so a new account is "
            "registered with a new key"
        )
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

    from certman.acme.client import acme_error, post

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

    from certman.acme.client import acme_error

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


# -- key change (RFC 8555 §7.3.5) and deactivation (§7.3.6) -------------------------------------


@dataclass(frozen=True)
class KeyChange:
    """A finished account key change: the account, where the keys are, the new key's RFC 7638
    thumbprint (public, for the operator to compare)."""

    account_url: str
    key_file: Path
    old_key_file: Path
    thumbprint: str


def pending_key_file(acme: AcmeConfig) -> Path:
    return acme.account_key.with_name(acme.account_key.name + ".new")


def old_key_file(acme: AcmeConfig) -> Path:
    return acme.account_key.with_name(acme.account_key.name + ".old")


def _existing_key(acme: AcmeConfig) -> PrivateKey:
    if not acme.account_key.exists():
        raise CertmanError(f"{acme.account_key}: no ACME account key, so no account to change")
    return read_private_key(acme.account_key)


def _open(
    acme: AcmeConfig, key: PrivateKey, sleep: Callable[[float], None], clock: Callable[[], float]
) -> acme_client.ClientV2:
    import random

    from certman.acme.client import open_client

    jwk, alg = jwk_and_alg(key)
    return open_client(acme, jwk, alg=alg, sleep=sleep, clock=clock, rng=random.Random())


def _sign_with(client: acme_client.ClientV2, key: PrivateKey) -> None:
    client.net.key, client.net.alg = jwk_and_alg(key)


def _account_url(client: acme_client.ClientV2, acme: AcmeConfig, state_dir: Path) -> str:
    """The account of the key ``client`` signs with (cache, else lookup); never registers."""
    ended = deactivated_account(state_dir, acme.directory)
    if ended is not None:
        raise AcmeError(f"ACME account at {acme.directory} was already deactivated on {ended}")
    url = read_cached_account(state_dir, acme.directory) or lookup_account(client, acme.directory)
    if url is None:
        raise AcmeError(
            f"ACME server {acme.directory}: no account for the key in {acme.account_key}"
        )
    use_account(client, url)
    return url


def rollover_account_key(
    acme: AcmeConfig,
    state_dir: Path,
    *,
    key_type: KeyType | None,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    progress: Callable[[str], None],
) -> KeyChange:
    """Give the account a new key (RFC 8555 §7.3.5). A change interrupted after the CA took it
    (``.new`` left behind, the CA knows that key) is finished rather than started again."""
    with account_lock(state_dir):
        old = _existing_key(acme)
        client = _open(acme, old, sleep, clock)
        pending = pending_key_file(acme)
        if pending.exists():
            new = read_private_key(pending)
            _sign_with(client, new)
            url = lookup_account(client, acme.directory)
            known = read_cached_account(state_dir, acme.directory)
            if url is not None and url != (known or url):
                pending.unlink()
                raise AcmeError(
                    f"{pending}: the CA has that key on another account ({url}); removed it, "
                    "run `certman account rollover` again for a fresh key"
                )
            if url is not None:
                progress(f"acme: the CA already took the key in {pending}; finishing the change")
                return _install_new_key(acme, state_dir, url, new)
            _sign_with(client, old)
            progress(f"acme: retrying the key change with the key left in {pending}")
        else:
            new = generate_key(key_type or acme.account_key_type)
            write_private_key(pending, new)  # on disk before the CA hears of it
        url = _account_url(client, acme, state_dir)
        progress(f"acme: changing the key of account {url}")
        _post_key_change(client, acme, url, old, new)
        return _install_new_key(acme, state_dir, url, new)


def _post_key_change(
    client: acme_client.ClientV2, acme: AcmeConfig, url: str, old: PrivateKey, new: PrivateKey
) -> None:
    """POST keyChange: an inner JWS signed by the new key (``jwk`` header, no nonce) naming the
    account and the old key, inside the usual JWS signed by the old key (RFC 8555 §7.3.5)."""
    from acme import errors as acme_errors
    from acme import jws, messages

    from certman.acme.client import acme_error, acme_step, post

    try:
        change_url = client.directory["keyChange"]
    except KeyError:
        raise AcmeError(f"ACME server {acme.directory}: offers no keyChange") from None
    new_jwk, new_alg = jwk_and_alg(new)
    old_jwk, _ = jwk_and_alg(old)
    payload = {"account": url, "oldKey": old_jwk.public_key().to_partial_json()}
    inner = jws.JWS.sign(
        json.dumps(payload).encode(), key=new_jwk, alg=new_alg, nonce=None, url=change_url
    )
    try:
        with acme_step(acme.directory, f"key change of account {url}"):
            try:
                post(client, change_url, inner)
            except (messages.Error, acme_errors.ConflictError) as exc:
                # A definite refusal (409: the new key has an account of its own): the old key
                # stays the account key; drop the new one.
                pending_key_file(acme).unlink(missing_ok=True)
                what = f"key change of account {url}"
                if isinstance(exc, acme_errors.ConflictError):
                    what += f" (the new key already belongs to account {exc.location})"
                raise acme_error(acme.directory, what, exc) from None
    except RetryLater as exc:
        raise RetryLater(
            f"{exc}; {_unknown_outcome(acme)}", exc.not_before, server_asked=exc.server_asked
        ) from None
    except AcmeError as exc:
        if pending_key_file(acme).exists():
            raise AcmeError(f"{exc}; {_unknown_outcome(acme)}") from None
        raise


def _unknown_outcome(acme: AcmeConfig) -> str:
    return (
        f"the new key stays in {pending_key_file(acme)}: run `certman account rollover` again "
        "to find out whether the CA took it"
    )


def _install_new_key(acme: AcmeConfig, state_dir: Path, url: str, new: PrivateKey) -> KeyChange:
    """Keep the old key as ``.old`` (0600), then rename ``.new`` over the key file."""
    import base64

    path, old_path = acme.account_key, old_key_file(acme)
    atomic_write(old_path, path.read_bytes(), mode=0o600)
    os.replace(pending_key_file(acme), path)
    fsync_dir(path.parent)
    save_cached_account(state_dir, acme.directory, url)
    jwk, _ = jwk_and_alg(new)
    thumbprint = base64.urlsafe_b64encode(jwk.thumbprint()).decode().rstrip("=")
    return KeyChange(url, path, old_path, thumbprint)


def deactivate_account(
    acme: AcmeConfig,
    state_dir: Path,
    *,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> str:
    """Deactivate the account (RFC 8555 §7.3.6: the CA then refuses everything it signs) and
    record that, so later runs fail with that reason. Returns the account URL."""
    from acme import messages

    from certman.acme.client import acme_step, iso_utc, post

    with account_lock(state_dir):
        client = _open(acme, _existing_key(acme), sleep, clock)
        url = _account_url(client, acme, state_dir)
        update = messages.UpdateRegistration(status=messages.STATUS_DEACTIVATED)
        with acme_step(acme.directory, f"deactivating account {url}"):
            status = post(client, url, update).json().get("status")
        if status != "deactivated":
            raise AcmeError(f"ACME server {acme.directory}: account {url} is still {status!r}")
        save_cached_account(state_dir, acme.directory, url, deactivated_at=iso_utc(clock()))
        return url
