"""Account key handling and the account URL cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from certgen import rsa_key
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwa import ES256, ES384, RS256

from certman.acme.account import (
    acme_state_dir,
    forget_cached_account,
    jwk_and_alg,
    load_or_create_account_key,
    read_cached_account,
    save_cached_account,
)
from certman.config.schema import AcmeConfig
from certman.keys import generate_key, private_key_pem
from certman.model import KeyType

DIRECTORY = "https://127.0.0.14:14000/dir"


def _acme(path: Path, kind: KeyType = KeyType.ECDSA_P256) -> AcmeConfig:
    return AcmeConfig(
        directory=DIRECTORY,
        email=None,
        ca_bundle=None,
        account_key=path,
        account_key_type=kind,
        eab=None,
        profile=None,
        preferred_chain=None,
        timeout=10,
        retries=2,
    )


def test_account_key_is_created_0600_once_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "acme" / "account.key"
    key, created = load_or_create_account_key(_acme(path))
    assert created and isinstance(key, ec.EllipticCurvePrivateKey)
    assert path.stat().st_mode & 0o777 == 0o600
    again, created_again = load_or_create_account_key(_acme(path))
    assert not created_again
    assert private_key_pem(again) == private_key_pem(key)


def test_account_key_type_follows_the_config(tmp_path: Path) -> None:
    key, _ = load_or_create_account_key(_acme(tmp_path / "k.pem", KeyType.ECDSA_P384))
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"


def test_jws_algorithm_matches_the_key() -> None:
    assert jwk_and_alg(generate_key(KeyType.ECDSA_P256))[1] is ES256
    assert jwk_and_alg(generate_key(KeyType.ECDSA_P384))[1] is ES384
    jwk, alg = jwk_and_alg(rsa_key())
    assert alg is RS256 and isinstance(jwk.key._wrapped, rsa.RSAPrivateKey)


def test_cached_account_url_round_trips_without_key_material(tmp_path: Path) -> None:
    save_cached_account(tmp_path, DIRECTORY, "https://127.0.0.14:14000/my-account/1")
    path = acme_state_dir(tmp_path) / "account.json"
    data = json.loads(path.read_text())
    assert data == {"directory": DIRECTORY, "account_url": "https://127.0.0.14:14000/my-account/1"}
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_cached_account(tmp_path, DIRECTORY) == "https://127.0.0.14:14000/my-account/1"


def test_cached_account_of_another_ca_is_ignored(tmp_path: Path) -> None:
    save_cached_account(tmp_path, "https://other.test/dir", "https://other.test/acct/9")
    assert read_cached_account(tmp_path, DIRECTORY) is None


@pytest.mark.parametrize("content", ["", "not json", "[]", '{"directory": 1}'])
def test_damaged_account_cache_reads_as_absent(tmp_path: Path, content: str) -> None:
    path = acme_state_dir(tmp_path) / "account.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert read_cached_account(tmp_path, DIRECTORY) is None


def test_forgetting_the_account_removes_the_cache(tmp_path: Path) -> None:
    save_cached_account(tmp_path, DIRECTORY, "https://127.0.0.14:14000/my-account/1")
    forget_cached_account(tmp_path)
    forget_cached_account(tmp_path)
    assert read_cached_account(tmp_path, DIRECTORY) is None


def test_a_deactivated_account_is_recorded_and_refused_before_asking_the_ca(
    tmp_path: Path,
) -> None:
    from certman.acme.account import deactivated_account, ensure_account
    from certman.errors import AcmeError

    url = "https://127.0.0.14:14000/my-account/1"
    save_cached_account(tmp_path, DIRECTORY, url, deactivated_at="2026-01-02T03:04:05Z")
    assert read_cached_account(tmp_path, DIRECTORY) == url
    assert deactivated_account(tmp_path, DIRECTORY) == "2026-01-02T03:04:05Z"
    acme = _acme(tmp_path / "account.key")
    with pytest.raises(AcmeError, match=r"deactivated on 2026-01-02T03:04:05Z.*account\.key away"):
        ensure_account(None, acme, tmp_path, key_is_new=False, progress=print)  # type: ignore[arg-type]


def test_an_active_account_has_no_deactivation_time(tmp_path: Path) -> None:
    from certman.acme.account import deactivated_account

    save_cached_account(tmp_path, DIRECTORY, "https://127.0.0.14:14000/my-account/1")
    assert deactivated_account(tmp_path, DIRECTORY) is None
    assert deactivated_account(tmp_path / "nothing", DIRECTORY) is None


def test_key_files_of_a_key_change_sit_beside_the_account_key(tmp_path: Path) -> None:
    from certman.acme.account import old_key_file, pending_key_file

    acme = _acme(tmp_path / "acme" / "account.key")
    assert pending_key_file(acme) == tmp_path / "acme" / "account.key.new"
    assert old_key_file(acme) == tmp_path / "acme" / "account.key.old"
