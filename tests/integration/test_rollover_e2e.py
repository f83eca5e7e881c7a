"""The DANE rollover end to end on the testbed: Pebble, BIND (signed), Unbound (caching), Postfix.

A prober checks the live Postfix as a DANE-validating sender would, every 200 ms, through the
same caching validating resolver; TTLs are 3 s, so a swap made before the old answers expire
would be seen (the deliberately broken build below proves the prober sees it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from certgen import make_pki
from helpers import Prober, write_config
from schemas import validate
from testbed import Testbed

from certman import keys
from certman.cli.main import main
from certman.config.load import load_config as load
from certman.config.schema import PostfixConfig, TlsaParams
from certman.dane.probe import fetch_chain
from certman.dane.tlsa import key_rdata as tlsa_key_rdata
from certman.dns.propagation import validated_rrset
from certman.dns.provider import DnsProvider, ProviderContext, create_provider
from certman.errors import VerificationError
from certman.lifecycle.state import Phase
from certman.lifecycle.statefile import CertDir
from certman.lifecycle.steps import deploy
from certman.postfix.commands import Postfix

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CRASHER = Path(__file__).with_name("crashing_certman.py")


def served_spki(bed: Testbed, instance: str) -> str:
    chain = fetch_chain(bed.postfix[instance].address, 25, timeout=5)
    return keys.cert_spki_sha256(chain[0])


def published(bed: Testbed, name: str) -> set[str]:
    """The key digests of the TLSA RRset as the primary serves it (no cache in between)."""
    rrset = rfc2136(bed).read(name, "TLSA")
    return {r.split()[-1] for r in rrset.rdatas} if rrset else set()


def primary_tlsa(bed: Testbed, name: str) -> list[str]:
    """The TLSA rdatas the primary serves, asked directly (no resolver, no zone lookup)."""
    import dns.message
    import dns.query

    answer = dns.query.udp(dns.message.make_query(name, "TLSA"), bed.bind.primary, timeout=3)
    return sorted(str(rdata) for rrset in answer.answer for rdata in rrset)


def validated(bed: Testbed, name: str) -> set[str]:
    rrset = validated_rrset(name, "TLSA", [bed.resolver])
    return {r.split()[-1] for r in rrset.rdatas} if rrset else set()


def rfc2136(bed: Testbed) -> DnsProvider:
    cfg = load(write_config(bed, bed.dir / "provider-only"))
    spec = cfg.providers["bind"]
    return create_provider(spec.type, "bind", spec.options, ProviderContext((bed.resolver,)))


def bootstrap(bed: Testbed, config: Path) -> None:
    """First run: adopt the testbed's self-signed cert, publish current + next, renew via ACME."""
    assert main(["--config", str(config), "run", "--max-wait", "120"]) == 0
    assert main(["--config", str(config), "run", "--max-wait", "120"]) == 0


def state_of(config: Path, name: str = "mx1") -> object:
    cfg = load(config)
    return CertDir.of(cfg.state_dir, name).load(name)


def fresh_host(bed: Testbed, directory: Path, ttl: int = 3) -> Path:
    """mx1 serves the testbed's initial self-signed key again and no TLSA RRset exists."""
    pf = bed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    postfix.set({"smtpd_tls_chain_files": str(pf.initial_chain_file)})
    postfix.reload()
    rfc2136(bed).delete("_25._tcp.mx1.dane.test", "TLSA")
    return write_config(bed, directory, ttl=ttl)


@pytest.fixture
def mx1(testbed: Testbed, tmp_path: Path) -> Path:
    return fresh_host(testbed, tmp_path)


def test_bootstrap_publishes_then_serves_an_acme_certificate_verified_by_dane(
    testbed: Testbed, mx1: Path
) -> None:
    bootstrap(testbed, mx1)
    state = state_of(mx1)
    assert state.phase is Phase.STEADY  # type: ignore[attr-defined]
    current = state.current["ecdsa-p256"]  # type: ignore[attr-defined]
    nxt = state.next["ecdsa-p256"]  # type: ignore[attr-defined]
    assert served_spki(testbed, "mx1") == current.spki_sha256
    assert validated(testbed, "_25._tcp.mx1.dane.test") == {current.spki_sha256, nxt.spki_sha256}
    chain = fetch_chain(testbed.postfix["mx1"].address, 25, timeout=5)
    assert len(chain) >= 2 and "Pebble" in chain[1].subject.rfc4514_string()
    ok, output = testbed.posttls_finger("mx1.dane.test", testbed.postfix["mx1"].address)
    assert ok, output


def test_rollover_keeps_dane_senders_delivering_throughout(testbed: Testbed, mx1: Path) -> None:
    bootstrap(testbed, mx1)
    before = state_of(mx1)
    old, nxt = before.current["ecdsa-p256"], before.next["ecdsa-p256"]  # type: ignore[attr-defined]
    prober = Prober(testbed, "mx1.dane.test", testbed.postfix["mx1"].address)
    with prober.running():
        assert main(["--config", str(mx1), "rollover", "mx1"]) == 0
        time.sleep(7)  # 2 x TTL + 1: resolvers drop the retired record meanwhile
    after = state_of(mx1)
    assert after.phase is Phase.STEADY  # type: ignore[attr-defined]
    assert after.current["ecdsa-p256"] == nxt  # type: ignore[attr-defined]
    assert served_spki(testbed, "mx1") == nxt.spki_sha256
    records = published(testbed, "_25._tcp.mx1.dane.test")
    assert old.spki_sha256 not in records
    assert nxt.spki_sha256 in records
    assert after.next["ecdsa-p256"].spki_sha256 in records  # type: ignore[attr-defined]
    assert len(prober.results) >= 10
    assert prober.failures == []


def test_broken_early_swap_is_seen_by_the_prober_and_rolled_back(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deliberately broken build: no 2 x TTL wait and no DNS gate before the swap.

    TTL 10 here, and the resolver's cache refilled just before: the old RRset then stays cached
    for the whole swap (about 2 s), as it would for real senders.
    """
    mx1 = fresh_host(testbed, tmp_path, ttl=10)
    bootstrap(testbed, mx1)
    served_before = served_spki(testbed, "mx1")
    monkeypatch.setattr(
        "certman.lifecycle.state.TlsaProgress.wait_seconds", lambda self, margin: 0.0
    )
    monkeypatch.setattr(deploy, "_unpublished", lambda *args: (set(), set()))
    prober = Prober(testbed, "mx1.dane.test", testbed.postfix["mx1"].address, interval=0.1)
    testbed.unbound_control("flush", "_25._tcp.mx1.dane.test")
    assert served_before in validated(testbed, "_25._tcp.mx1.dane.test")  # cached for 10 s now
    with prober.running():
        with pytest.raises(VerificationError):
            from certman.lifecycle.context import Context
            from certman.lifecycle.engine import advance
            from certman.lifecycle.state import Operation

            cfg = load(mx1)
            ctx = Context(cfg, time.time, time.sleep)
            advance(ctx, cfg.certificate("mx1"), request=Operation.COMPROMISED, max_wait=60)
        time.sleep(0.5)
    assert prober.failures, "the prober must see a swap made before caches expired"
    state = state_of(mx1)
    assert state.phase is Phase.STEADY and state.last_error  # type: ignore[attr-defined]
    assert served_spki(testbed, "mx1") == served_before  # rolled back


CRASH_POINTS = ["age", "install", "install-planned", "verify", "retire-wait", "confirm"]


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_sigkill_at_each_phase_then_run_finishes_rollover(
    testbed: Testbed, mx1: Path, crash_at: str
) -> None:
    bootstrap(testbed, mx1)
    before = state_of(mx1)
    old = before.current["ecdsa-p256"]  # type: ignore[attr-defined]
    nxt = before.next["ecdsa-p256"]  # type: ignore[attr-defined]
    prober = Prober(testbed, "mx1.dane.test", testbed.postfix["mx1"].address)
    with prober.running():
        crashed = subprocess.run(
            [sys.executable, str(CRASHER), crash_at, "--config", str(mx1), "rollover", "mx1"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
        if crash_at != "confirm":  # only the retirement (publish, then confirm) removes it
            assert old.spki_sha256 in published(testbed, "_25._tcp.mx1.dane.test")
        assert main(["--config", str(mx1), "run", "--max-wait", "120"]) == 0
        assert main(["--config", str(mx1), "run", "--max-wait", "120"]) == 0
    after = state_of(mx1)
    assert after.phase is Phase.STEADY, after  # type: ignore[attr-defined]
    assert after.current["ecdsa-p256"] == nxt  # type: ignore[attr-defined]
    assert served_spki(testbed, "mx1") == nxt.spki_sha256
    assert old.spki_sha256 not in published(testbed, "_25._tcp.mx1.dane.test")
    assert prober.failures == []


def test_second_concurrent_run_reports_the_lock_and_changes_nothing(
    testbed: Testbed, mx1: Path
) -> None:
    bootstrap(testbed, mx1)
    cfg = load(mx1)
    cdir = CertDir.of(cfg.state_dir, "mx1")
    before = cdir.state_file.read_bytes()
    with cdir.lock():
        other = subprocess.run(
            [sys.executable, "-m", "certman", "--config", str(mx1), "rollover", "mx1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert other.returncode == 75
    assert "locked by another certman run" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert cdir.state_file.read_bytes() == before


def test_postfix_reload_runs_in_the_instance_directory(testbed: Testbed, mx1: Path) -> None:
    cfg = load(mx1)
    assert Postfix(cfg.postfix).get("myhostname")["myhostname"] == "mx1.dane.test"


def test_status_tlsa_dry_run_and_check_describe_the_real_state(
    testbed: Testbed, mx1: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap(testbed, mx1)
    state = state_of(mx1)
    current, nxt = state.current["ecdsa-p256"], state.next["ecdsa-p256"]  # type: ignore[attr-defined]
    capsys.readouterr()
    assert main(["--config", str(mx1), "tlsa", "mx1"]) == 0
    zone_lines = capsys.readouterr().out.splitlines()
    assert zone_lines == sorted(
        f"_25._tcp.mx1.dane.test. 3 IN TLSA 3 1 1 {k.spki_sha256}" for k in (current, nxt)
    )
    assert main(["--config", str(mx1), "status", "mx1"]) == 0
    status = capsys.readouterr().out
    assert "phase steady" in status and current.id in status and nxt.id in status
    before_state = CertDir.of(load(mx1).state_dir, "mx1").state_file.read_bytes()
    before_dns = published(testbed, "_25._tcp.mx1.dane.test")
    assert main(["--config", str(mx1), "rollover", "mx1", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "next key published and aged" in plan and "remove the old key's record" in plan
    assert CertDir.of(load(mx1).state_dir, "mx1").state_file.read_bytes() == before_state
    assert published(testbed, "_25._tcp.mx1.dane.test") == before_dns
    for argv, schema in (
        (["status", "--json"], "status"),
        (["tlsa", "mx1", "--json"], "tlsa"),
        (["rollover", "mx1", "--dry-run", "--json"], "rollover-plan"),
    ):
        assert main(["--config", str(mx1), *argv]) == 0
        document = json.loads(capsys.readouterr().out)
        validate(schema, document)
    assert document["steps"][-1].endswith("remove the old key's record, publish a new next key")
    assert main(["--config", str(mx1), "check", "--no-postfix"]) == 0
    assert capsys.readouterr().out.startswith("CERTMAN OK - ")
    # Someone points Postfix at another key behind certman's back: check says so.
    pki = make_pki()
    leaf = pki.leaf("mx1.dane.test")
    stray = mx1.parent / "stray.pem"
    stray.write_bytes(leaf.key_pem + pki.fullchain_pem(leaf))
    pf = testbed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    postfix.set({"smtpd_tls_chain_files": str(stray)})
    assert main(["--config", str(mx1), "check", "--no-postfix"]) == 1
    assert "WARNING: served: mx1: Postfix serves a key certman does not know" in (
        capsys.readouterr().out
    )


def test_compromised_rollover_uses_a_fresh_key_and_says_how_long_the_old_one_lingers(
    testbed: Testbed, mx1: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap(testbed, mx1)
    before = state_of(mx1)
    old, staged_next = before.current["ecdsa-p256"], before.next["ecdsa-p256"]  # type: ignore[attr-defined]
    prober = Prober(testbed, "mx1.dane.test", testbed.postfix["mx1"].address)
    with prober.running():
        assert main(["--config", str(mx1), "rollover", "mx1", "--compromised"]) == 0
    out = capsys.readouterr().out
    assert "validating senders may still hold it until" in out
    after = state_of(mx1)
    new = after.current["ecdsa-p256"]  # type: ignore[attr-defined]
    assert new.spki_sha256 not in {old.spki_sha256, staged_next.spki_sha256}
    assert served_spki(testbed, "mx1") == new.spki_sha256
    records = published(testbed, "_25._tcp.mx1.dane.test")
    assert old.spki_sha256 not in records and staged_next.spki_sha256 not in records
    assert prober.failures == []


def test_opt_in_issuer_records_are_published_verified_and_retired(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 1 1 (DANE-TA, the intermediate's key) beside 3 1 1, as an explicit opt-in."""
    fresh_host(testbed, tmp_path)
    config = write_config(
        testbed,
        tmp_path,
        extra_dane='records = ["3 1 1", "2 1 1"]\nallow_issuer_records = true',
    )
    bootstrap(testbed, config)
    assert "2 1 x records pin the CA's intermediate" in capsys.readouterr().out
    state = state_of(config)
    served = fetch_chain(testbed.postfix["mx1"].address, 25, timeout=5)
    issuer = tlsa_key_rdata(TlsaParams(2, 1, 1), served[1].public_key())
    rrset = rfc2136(testbed).read("_25._tcp.mx1.dane.test", "TLSA")
    assert rrset is not None and issuer in rrset.rdatas
    assert state.issuer_records == (issuer,)  # type: ignore[attr-defined]
    ok, output = testbed.posttls_finger("mx1.dane.test", testbed.postfix["mx1"].address)
    assert ok, output
    prober = Prober(testbed, "mx1.dane.test", testbed.postfix["mx1"].address)
    with prober.running():
        assert main(["--config", str(config), "rollover", "mx1"]) == 0
    assert prober.failures == []
    rrset = rfc2136(testbed).read("_25._tcp.mx1.dane.test", "TLSA")
    assert rrset is not None and issuer in rrset.rdatas and len(rrset.rdatas) == 3


def test_a_zone_that_does_not_validate_stops_the_rollout_before_any_change(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """broken.test is signed, but the resolver's trust anchor for it is wrong: SERVFAIL. DANE
    cannot work there, so certman says so in one line and publishes nothing."""
    fresh_host(testbed, tmp_path)
    config = write_config(testbed, tmp_path, zone="broken.test")
    before = primary_tlsa(testbed, "_25._tcp.mx1.broken.test")
    assert before  # the testbed put one record there
    assert main(["--config", str(config), "run", "--max-wait", "30"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "resolver 127.0.0.53" in err[0] and "_25._tcp.mx1.broken.test" in err[0]
    assert "SERVFAIL" in err[0]
    state = state_of(config)
    assert state.phase is Phase.PUBLISH and state.last_error  # type: ignore[attr-defined]
    assert primary_tlsa(testbed, "_25._tcp.mx1.broken.test") == before  # nothing was written
    assert served_spki(testbed, "mx1") == state.current["ecdsa-p256"].spki_sha256  # type: ignore[attr-defined]
