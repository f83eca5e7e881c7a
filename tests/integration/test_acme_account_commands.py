"""`certman account rollover` (RFC 8555 §7.3.5) and `certman account deactivate` (§7.3.6)
against the testbed's Pebble."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from acme import messages
from acme_support import Timer, providers_of, unique_name, write_config
from testbed import Testbed

from certman.acme import account as acme_account
from certman.acme.account import jwk_and_alg, lookup_account, read_cached_account, use_account
from certman.acme.client import OrderRequest, open_client, post
from certman.acme.issue import issue_certificate
from certman.cli.main import main
from certman.config.schema import Config
from certman.errors import AcmeError, CertmanError
from certman.keys import generate_key, private_key_pem, read_private_key
from certman.model import KeyType

if TYPE_CHECKING:
    from acme.client import ClientV2

    from certman.keys import PrivateKey

pytestmark = pytest.mark.integration


def issue(config: Config, messages_seen: list[str] | None = None) -> None:
    timer = Timer()
    issue_certificate(
        config,
        config.certificate("mx"),
        generate_key(KeyType.ECDSA_P256),
        providers=providers_of(config),
        sleep=timer.sleep,
        clock=timer.clock,
        progress=messages_seen.append if messages_seen is not None else None,
    )


def account_config(testbed: Testbed, directory: Path) -> Config:
    """A config whose account exists at Pebble (registered by a first issuance)."""
    config = write_config(directory, testbed, domains=(unique_name("acct"),))
    issue(config)
    return config


def fresh_names(config: Config, testbed: Testbed) -> Config:
    """The same account and state, a name Pebble's resolver has not cached a challenge for."""
    return write_config(
        config.path.parent,
        testbed,
        domains=(unique_name("acct"),),
        acme={"account_key": str(config.acme.account_key)},
        state_dir=config.state_dir,
    )


def client_for(config: Config, key: PrivateKey) -> ClientV2:
    jwk, alg = jwk_and_alg(key)
    return open_client(
        config.acme, jwk, alg=alg, sleep=time.sleep, clock=time.time, rng=random.Random()
    )


def order_with(config: Config, key: PrivateKey, url: str) -> None:
    """POST newOrder signed by ``key`` for the account ``url`` (kid), as an issuance would."""
    client = client_for(config, key)
    use_account(client, url)
    identifier = messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=unique_name("o"))
    post(client, client.directory["newOrder"], OrderRequest(identifiers=[identifier]))


def lookup(config: Config, key: PrivateKey) -> str | None:
    return lookup_account(client_for(config, key), config.acme.directory)


def test_rollover_moves_the_account_to_a_new_key_and_the_ca_refuses_the_old_one(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = account_config(testbed, tmp_path)
    url = read_cached_account(config.state_dir, config.acme.directory)
    old_pem = config.acme.account_key.read_bytes()
    old_key = read_private_key(config.acme.account_key)

    started = time.monotonic()
    assert main(["--config", str(config.path), "account", "rollover"]) == 0
    elapsed = time.monotonic() - started
    said = capsys.readouterr().out
    assert f"account {url}: new key in {config.acme.account_key}" in said

    key_file, old_file = config.acme.account_key, acme_account.old_key_file(config.acme)
    assert key_file.read_bytes() != old_pem and old_file.read_bytes() == old_pem
    assert key_file.stat().st_mode & 0o777 == 0o600 and old_file.stat().st_mode & 0o777 == 0o600
    assert not acme_account.pending_key_file(config.acme).exists()
    assert read_cached_account(config.state_dir, config.acme.directory) == url

    new_key = read_private_key(key_file)
    assert lookup(config, new_key) == url  # the CA has the same account under the new key
    assert lookup(config, old_key) is None  # and none under the old one
    with pytest.raises(messages.Error) as refused:
        order_with(config, old_key, url or "")
    with capsys.disabled():
        print(f"\naccount key change: {elapsed:.2f} s; old key refused: {refused.value}")

    seen: list[str] = []
    issue(fresh_names(config, testbed), seen)  # a new order with the new key
    assert not any("account" in m for m in seen)  # same cached account, nothing registered


def test_a_change_the_ca_took_before_the_files_moved_is_finished_by_the_next_rollover(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = account_config(testbed, tmp_path)
    url = read_cached_account(config.state_dir, config.acme.directory)
    old_pem = config.acme.account_key.read_bytes()

    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # killed after the CA answered, before the files moved

    monkeypatch.setattr(acme_account, "_install_new_key", crash)
    assert main(["--config", str(config.path), "account", "rollover"]) == 130
    monkeypatch.undo()
    pending = acme_account.pending_key_file(config.acme)
    assert pending.exists() and config.acme.account_key.read_bytes() == old_pem
    pending_pem = pending.read_bytes()

    assert main(["--config", str(config.path), "account", "rollover"]) == 0
    assert config.acme.account_key.read_bytes() == pending_pem
    assert lookup(config, read_private_key(config.acme.account_key)) == url
    issue(fresh_names(config, testbed))


def test_a_key_change_the_ca_refuses_keeps_the_old_key(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new key already has an account of its own. RFC 8555 §7.3.5 says 409; Pebble answers
    500 serverInternal, which certman retries and then cannot tell from "did not arrive": the
    key stays in .new, and the next rollover asks the CA about it and clears it up."""
    config = account_config(testbed, tmp_path / "a")
    other = account_config(testbed, tmp_path / "b")
    other_key = read_private_key(other.acme.account_key)
    old_pem = config.acme.account_key.read_bytes()

    def rollover() -> None:
        acme_account.rollover_account_key(
            config.acme,
            config.state_dir,
            key_type=None,
            sleep=time.sleep,
            clock=time.time,
            progress=print,
        )

    with monkeypatch.context() as patch:
        patch.setattr(acme_account, "generate_key", lambda kind: other_key)
        with pytest.raises(CertmanError, match=r"already (belongs to|in use by) account") as first:
            rollover()
    print(f"\n{first.value}")
    assert config.acme.account_key.read_bytes() == old_pem
    assert not acme_account.old_key_file(config.acme).exists()
    pending = acme_account.pending_key_file(config.acme)
    if pending.exists():  # Pebble's 500: the outcome looked unknown
        with pytest.raises(AcmeError, match="another account") as second:
            rollover()
        print(second.value)
        assert not pending.exists()
        assert config.acme.account_key.read_bytes() == old_pem
    rollover()
    assert config.acme.account_key.read_bytes() not in (old_pem, private_key_pem(other_key))
    issue(fresh_names(config, testbed))


def test_deactivation_needs_yes_and_then_new_orders_fail_saying_why(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = account_config(testbed, tmp_path)
    url = read_cached_account(config.state_dir, config.acme.directory)
    args = ["--config", str(config.path), "account", "deactivate"]
    assert main(args) == 2
    assert "add --yes" in capsys.readouterr().err
    assert acme_account.deactivated_account(config.state_dir, config.acme.directory) is None

    assert main([*args, "--yes"]) == 0
    assert f"account {url}: deactivated" in capsys.readouterr().out
    with pytest.raises(AcmeError, match=r"was deactivated on .*move .* away") as local:
        issue(fresh_names(config, testbed))
    with capsys.disabled():
        print(f"\n{local.value}")

    # The CA refuses it too: the account's key with its kid, and a lookup from a fresh state.
    key = read_private_key(config.acme.account_key)
    with pytest.raises(messages.Error) as refused:
        order_with(config, key, url or "")
    with capsys.disabled():
        print(f"CA: {refused.value}")
    elsewhere = write_config(
        tmp_path / "fresh",
        testbed,
        domains=(unique_name("acct"),),
        acme={"account_key": str(config.acme.account_key)},
    )
    with pytest.raises(AcmeError, match="deactivated") as remote:
        issue(elsewhere)
    with capsys.disabled():
        print(f"fresh state: {remote.value}")
    assert main([*args, "--yes"]) == 1
    assert "already deactivated" in capsys.readouterr().err
