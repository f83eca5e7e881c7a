"""The certbot deploy hook's decisions: which certificate, which case, what gets staged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
from certgen import Issued, certificate_config, make_pki

from certman import keys
from certman.config.schema import CertificateConfig, Config, DaneConfig
from certman.errors import CertmanError, ConfigError
from certman.integrations.certbot import (
    CertbotFiles,
    Verdict,
    check_ready,
    classify,
    find_certificate,
    lineage_from,
    read_files,
    settle,
    stage,
)
from certman.lifecycle.state import Operation, Phase, State
from certman.lifecycle.statefile import CertDir
from certman.model import CertInfo, KeyInfo, KeyType

SLOT = KeyType.ECDSA_P256.value
PKI = make_pki("Certbot")


@dataclass
class FakeConfig:
    path: Path = Path("/etc/certman/certman.toml")
    certificates: dict[str, CertificateConfig] = field(default_factory=dict)


def config_with(tmp: Path, **domains: tuple[str, ...]) -> Config:
    certs = {n: certificate_config(tmp, name=n, domains=d) for n, d in domains.items()}
    return cast(Config, FakeConfig(certificates=certs))


def lineage(tmp: Path, leaf: Issued) -> Path:
    live = tmp / "live" / "mx1"
    live.mkdir(parents=True, exist_ok=True)
    (live / "privkey.pem").write_bytes(leaf.key_pem)
    (live / "fullchain.pem").write_bytes(PKI.fullchain_pem(leaf))
    return live


def key_info(spki: str) -> KeyInfo:
    return KeyInfo(KeyInfo.make_id(KeyType.ECDSA_P256, spki), KeyType.ECDSA_P256, spki, 0.0)


def steady(current: KeyInfo, nxt: KeyInfo, serial: str = "1") -> State:
    cert = CertInfo(current.id, serial, 0.0, 1.0, None, "/nonexistent")
    return State(
        "mx",
        phase=Phase.STEADY,
        current={SLOT: current},
        next={SLOT: nxt},
        certs={SLOT: cert},
        next_ready_at=100.0,
    )


def files_for(tmp: Path, leaf: Issued) -> CertbotFiles:
    return read_files(lineage(tmp, leaf))


# -- which certificate ------------------------------------------------------------------------


def test_exact_names_win_over_a_certificate_covering_a_subset(tmp_path: Path) -> None:
    cfg = config_with(tmp_path, one=("mx1.dane.test",), both=("mx1.dane.test", "mx.dane.test"))
    assert find_certificate(cfg, ["MX1.dane.test.", "mx.dane.test"]).name == "both"
    assert find_certificate(cfg, ["mx1.dane.test"]).name == "one"


def test_a_certbot_certificate_with_extra_names_finds_the_only_covered_one(tmp_path: Path) -> None:
    cfg = config_with(tmp_path, mx=("mx1.dane.test",), other=("mx2.dane.test",))
    assert find_certificate(cfg, ["mx1.dane.test", "www.dane.test"]).name == "mx"


def test_two_covered_certificates_are_refused_not_guessed(tmp_path: Path) -> None:
    cfg = config_with(tmp_path, a=("mx1.dane.test",), b=("mx2.dane.test",))
    with pytest.raises(ConfigError, match="a, b all match"):
        find_certificate(cfg, ["mx1.dane.test", "mx2.dane.test"])


def test_a_partial_overlap_is_no_match(tmp_path: Path) -> None:
    cfg = config_with(tmp_path, mx=("mx1.dane.test", "mx2.dane.test"))
    with pytest.raises(ConfigError, match="no \\[certificates"):
        find_certificate(cfg, ["mx1.dane.test"])


# -- the lineage ----------------------------------------------------------------------------------


def test_lineage_comes_from_certbots_variables() -> None:
    found = lineage_from(
        None, {"RENEWED_LINEAGE": "/le/live/mx1", "RENEWED_DOMAINS": "mx1.dane.test mx.dane.test"}
    )
    assert found.path == Path("/le/live/mx1")
    assert found.domains == ("mx1.dane.test", "mx.dane.test")


def test_missing_variables_say_how_to_name_the_lineage_by_hand() -> None:
    with pytest.raises(CertmanError, match="--lineage DIR"):
        lineage_from(None, {"RENEWED_LINEAGE": "/le/live/mx1"})


def test_a_lineage_given_by_hand_takes_its_names_from_the_certificate(tmp_path: Path) -> None:
    live = lineage(tmp_path, PKI.leaf("mx1.dane.test", sans=("mx1.dane.test", "mx.dane.test")))
    found = lineage_from(str(live), {})
    assert found == lineage_from(str(live), {"RENEWED_LINEAGE": "/elsewhere"})
    assert found.domains == ("mx1.dane.test", "mx.dane.test")


def test_a_chain_that_does_not_match_the_key_is_refused(tmp_path: Path) -> None:
    live = lineage(tmp_path, PKI.leaf("mx1.dane.test"))
    (live / "privkey.pem").write_bytes(PKI.leaf("mx1.dane.test").key_pem)
    with pytest.raises(CertmanError, match="does not match"):
        read_files(live)


# -- which case -----------------------------------------------------------------------------------


def test_the_served_key_is_a_renewal_and_the_served_certificate_nothing(tmp_path: Path) -> None:
    files = files_for(tmp_path, PKI.leaf("mx1.dane.test"))
    state = steady(key_info(files.spki_sha256), key_info("ab" * 32))
    assert classify(state, files) is Verdict.RENEW
    assert classify(steady(state.current[SLOT], state.next[SLOT], files.serial), files) is (
        Verdict.SERVED
    )


def test_the_published_next_key_is_a_promotion(tmp_path: Path) -> None:
    files = files_for(tmp_path, PKI.leaf("mx1.dane.test"))
    assert classify(steady(key_info("cd" * 32), key_info(files.spki_sha256)), files) is (
        Verdict.PROMOTE
    )


def test_a_key_certman_does_not_know_is_a_new_key(tmp_path: Path) -> None:
    files = files_for(tmp_path, PKI.leaf("mx1.dane.test"))
    assert classify(steady(key_info("cd" * 32), key_info("ef" * 32)), files) is Verdict.NEW_KEY


def test_no_state_yet_or_an_operation_in_progress_is_refused(tmp_path: Path) -> None:
    cert = certificate_config(tmp_path)
    files = files_for(tmp_path, PKI.leaf("mx1.dane.test"))
    with pytest.raises(CertmanError, match="run `certman run` first"):
        check_ready(cert, State("mx"), files)
    busy = steady(key_info("cd" * 32), key_info("ef" * 32)).evolve(
        phase=Phase.AGE, operation=Operation.ROLLOVER
    )
    with pytest.raises(CertmanError, match=r"rollover is in progress.*--lineage"):
        check_ready(cert, busy, files)


def test_a_key_type_the_certificate_is_not_configured_for_is_refused(tmp_path: Path) -> None:
    cert = certificate_config(tmp_path, key_types=(KeyType.ECDSA_P384,))
    files = files_for(tmp_path, PKI.leaf("mx1.dane.test"))
    with pytest.raises(CertmanError, match="ecdsa-p256 key, but certificate mx has key_type"):
        check_ready(cert, steady(key_info("cd" * 32), key_info("ef" * 32)), files)


# -- staging --------------------------------------------------------------------------------------


def dane() -> DaneConfig:
    from certman.config.schema import TlsaParams

    return DaneConfig(
        hosts=("mx1.dane.test",),
        ports=(25,),
        records=(TlsaParams(3, 1, 1),),
        ttl=300,
        margin=60.0,
        provider="dns",
        probe_address="127.0.0.1",
        rollover_days=0,
    )


def test_a_new_key_becomes_the_next_key_and_the_old_next_key_is_retired(tmp_path: Path) -> None:
    cert = certificate_config(tmp_path / "pf", dane=dane())
    cdir = CertDir(tmp_path / "state")
    files = files_for(tmp_path, PKI.leaf("mx1.dane.test"))
    before = steady(key_info("cd" * 32), key_info("ef" * 32))
    after = stage(cert, cdir, before, files, now=50.0)
    assert after.operation is Operation.ROLLOVER and after.phase is Phase.PUBLISH
    assert after.current == before.current
    assert after.next[SLOT].spki_sha256 == files.spki_sha256
    assert after.next_ready_at is None
    assert "ef" * 32 in after.retired
    assert after.staged[SLOT].serial == files.serial
    key = keys.read_private_key(cdir.key_file(after.next[SLOT].id))
    assert keys.spki_sha256(key.public_key()) == files.spki_sha256
    assert cdir.key_file(after.next[SLOT].id).stat().st_mode & 0o777 == 0o600


def test_the_served_key_stages_a_renewal_that_leaves_dns_alone(tmp_path: Path) -> None:
    cert = certificate_config(tmp_path / "pf", dane=dane())
    cdir = CertDir(tmp_path / "state")
    files = files_for(tmp_path, PKI.leaf("mx1.dane.test"))
    before = steady(key_info(files.spki_sha256), key_info("ef" * 32))
    after = stage(cert, cdir, before, files, now=50.0)
    assert after.operation is Operation.RENEW and after.phase is Phase.ISSUE
    assert (after.current, after.next, after.retired) == (before.current, before.next, ())
    assert after.staged[SLOT].key_id == before.current[SLOT].id


def test_the_aged_next_key_goes_straight_to_its_age_check(tmp_path: Path) -> None:
    cert = certificate_config(tmp_path / "pf", dane=dane())
    cdir = CertDir(tmp_path / "state")
    files = files_for(tmp_path, PKI.leaf("mx1.dane.test"))
    before = steady(key_info("cd" * 32), key_info(files.spki_sha256))
    after = stage(cert, cdir, before, files, now=50.0)
    assert after.operation is Operation.ROLLOVER and after.phase is Phase.AGE
    assert after.tlsa.not_before == before.next_ready_at
    assert after.next == before.next


def test_a_renewal_stuck_before_issuance_gives_way_to_certbot(tmp_path: Path) -> None:
    cert = certificate_config(tmp_path)
    files = files_for(tmp_path, PKI.leaf("mx1.dane.test"))
    base = steady(key_info(files.spki_sha256), key_info("ef" * 32))
    stuck = base.evolve(phase=Phase.ISSUE, operation=Operation.RENEW, retry_after=1e12)
    settled = settle(stuck)
    check_ready(cert, settled, files)
    assert settled.phase is Phase.STEADY and settled.retry_after is None
    assert classify(settled, files) is Verdict.RENEW
    publishing = base.evolve(phase=Phase.ISSUE, operation=Operation.ROLLOVER)
    assert settle(publishing) == publishing  # a rollover in flight is not abandoned
