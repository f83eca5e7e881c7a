"""End to end on the testbed: hosts sharing one TLSA name, a dual RSA + ECDSA certificate, a
renewal that must not touch DNS, and a verification failure while Postfix keeps the old chain.

TTLs are 3 s and the DANE clients' resolver caches, as in the other end-to-end tests; posttls-finger
probers check each server as a DANE-validating sender would (RFC 7672) while certman works.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    OFFER_ECDSA_ONLY,
    OFFER_RSA_ONLY,
    Prober,
    in_background,
    posttls_finger,
    write_config,
)
from testbed import Testbed

from certman import keys
from certman.cli.main import main
from certman.config.load import load_config as load
from certman.config.schema import PostfixConfig
from certman.dane.probe import fetch_chain, verify_live
from certman.dns.provider import DnsProvider, ProviderContext, RRset, create_provider
from certman.errors import VerificationError
from certman.lifecycle.context import Context
from certman.lifecycle.engine import advance
from certman.lifecycle.state import Operation, Phase, State
from certman.lifecycle.statefile import CertDir
from certman.lifecycle.steps import dane as dane_steps
from certman.model import KeyType
from certman.postfix.commands import Postfix, split_list

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
INSTANCES = ("mx1", "mx2")
SHARED = "mx.dane.test"  # the MX host name both servers answer for
SHARED_TLSA = f"_25._tcp.{SHARED}"
TTL = 3
AFTER_ROLLOVER = 2 * TTL + 1  # the retired record leaves every resolver cache meanwhile


# -- small tools ----------------------------------------------------------------------------------


def dns(bed: Testbed) -> DnsProvider:
    """The testbed's primary through certman's own RFC 2136 provider (TSIG, compare-and-swap)."""
    cfg = load(write_config(bed, bed.dir / "provider-only"))
    spec = cfg.providers["bind"]
    return create_provider(spec.type, "bind", spec.options, ProviderContext((bed.resolver,)))


def digests(rrset: RRset | None) -> set[str]:
    return {r.split()[-1] for r in rrset.rdatas} if rrset else set()


def served_spki(address: str, key_type: KeyType | None = None) -> str:
    return keys.cert_spki_sha256(fetch_chain(address, 25, timeout=5, key_type=key_type)[0])


def state_of(config: Path, name: str = "mx1") -> State:
    return CertDir.of(load(config).state_dir, name).load(name)


def spkis(keyset: dict[str, Any]) -> set[str]:
    return {k.spki_sha256 for k in keyset.values()}


def postfix_of(bed: Testbed, instance: str) -> Postfix:
    return Postfix(PostfixConfig(bed.postfix[instance].config_dir, "postconf", "postfix", None))


def fresh_instance(bed: Testbed, instance: str) -> None:
    """The instance serves the testbed's initial self-signed key again; no TLSA at its name."""
    postfix = postfix_of(bed, instance)
    postfix.set({"smtpd_tls_chain_files": str(bed.postfix[instance].initial_chain_file)})
    postfix.reload()
    dns(bed).delete(f"_25._tcp.{bed.postfix[instance].host}", "TLSA")


def bootstrap(config: Path) -> None:
    """Adopt the self-signed key, publish current + next, let them age, renew through ACME."""
    assert main(["--config", str(config), "run", "--max-wait", "120"]) == 0
    assert main(["--config", str(config), "run", "--max-wait", "120"]) == 0


def certman(config: Path, *args: str) -> subprocess.Popen[str]:
    """certman in its own process (the pytest process is in the testbed's namespace already)."""
    return subprocess.Popen(
        [sys.executable, "-m", "certman", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def together(*procs: subprocess.Popen[str], timeout: float = 120) -> list[str]:
    """Wait for processes started together; each must exit 0. Returns their outputs."""
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"{proc.args!r}: exit {proc.returncode}\n{output}"
    return outputs


@contextmanager
def all_running(*probers: Prober) -> Iterator[None]:
    with ExitStack() as stack:
        for prober in probers:
            stack.enter_context(prober.running())
        yield


# -- 1. several hosts, one name ---------------------------------------------------------------


@dataclass
class RRsetWatch:
    """Samples, every ``interval`` s, which key each server presents and the shared TLSA RRset
    on the primary (no cache in between): what a sender resolving it fresh would get."""

    bed: Testbed
    interval: float = 0.05
    samples: list[tuple[float, dict[str, str], set[str]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        provider = dns(self.bed)
        while not self._stop.is_set():
            try:
                served = {i: served_spki(self.bed.postfix[i].address) for i in INSTANCES}
                records = digests(provider.read(SHARED_TLSA, "TLSA"))
                self.samples.append((time.time(), served, records))
            except Exception as exc:  # reported by the test, never swallowed
                self.errors.append(f"{time.time():.2f}: {exc}")
            self._stop.wait(self.interval)

    def lost(self) -> list[str]:
        """Samples where a server's presented key had no record at the shared name."""
        return [
            f"{at:.2f}: {inst} serves {spki[:16]}, RRset holds {sorted(d[:8] for d in records)}"
            for at, served, records in self.samples
            for inst, spki in served.items()
            if spki not in records
        ]

    @contextmanager
    def running(self) -> Iterator[RRsetWatch]:
        with in_background(self.run, self._stop):
            yield self


@pytest.fixture
def shared_name(testbed: Testbed) -> Iterator[None]:
    """mx.dane.test has both servers' addresses; each server's own TLSA name is a CNAME to
    _25._tcp.mx.dane.test (RFC 7671 §7), so a posttls-finger prober per server checks it against
    the one shared RRset."""
    provider = dns(testbed)
    provider.delete(SHARED_TLSA, "TLSA")
    addresses = [testbed.postfix[i].address for i in INSTANCES]
    provider.replace(RRset.of(SHARED, "A", TTL, addresses))
    for instance in INSTANCES:
        fresh_instance(testbed, instance)
        alias = f"_25._tcp.{testbed.postfix[instance].host}"
        provider.replace(RRset.of(alias, "CNAME", TTL, [f"{SHARED_TLSA}."]))
    try:
        yield
    finally:
        for instance in INSTANCES:
            provider.delete(f"_25._tcp.{testbed.postfix[instance].host}", "CNAME")
        provider.delete(SHARED, "A")
        provider.delete(SHARED_TLSA, "TLSA")


def shared_configs(bed: Testbed, directory: Path) -> dict[str, Path]:
    """One certman per server, each with its own state; both publish at _25._tcp.mx.dane.test."""
    return {
        instance: write_config(
            bed,
            directory / instance,
            instance=instance,
            domains=[bed.postfix[instance].host, SHARED],
            dane_hosts=[SHARED],
        )
        for instance in INSTANCES
    }


def test_two_hosts_sharing_a_tlsa_name_roll_over_at_once_without_losing_records(
    testbed: Testbed, shared_name: None, tmp_path: Path
) -> None:
    configs = shared_configs(testbed, tmp_path)
    for _ in range(2):  # see bootstrap(): adopt + publish + age, then renew via ACME
        together(*(certman(c, "run", "--max-wait", "120") for c in configs.values()))
    before = {i: state_of(c, i) for i, c in configs.items()}
    every_key = set().union(*(spkis(s.current) | spkis(s.next) for s in before.values()))
    assert len(every_key) == 4
    assert digests(dns(testbed).read(SHARED_TLSA, "TLSA")) == every_key

    watch = RRsetWatch(testbed)
    probers = [
        Prober(testbed, testbed.postfix[i].host, testbed.postfix[i].address) for i in INSTANCES
    ]
    with watch.running(), all_running(*probers):
        started = time.monotonic()
        outputs = together(*(certman(c, "rollover", i) for i, c in configs.items()))
        took = time.monotonic() - started
        time.sleep(AFTER_ROLLOVER)

    after = {i: state_of(c, i) for i, c in configs.items()}
    for instance, state in after.items():
        assert state.phase is Phase.STEADY, state
        assert state.current == before[instance].next
        assert served_spki(testbed.postfix[instance].address) == next(iter(spkis(state.current)))
    final = dns(testbed).read(SHARED_TLSA, "TLSA")
    wanted = set().union(*(spkis(s.current) | spkis(s.next) for s in after.values()))
    assert final is not None and len(final.rdatas) == 4
    assert digests(final) == wanted
    assert watch.errors == []
    assert len(watch.samples) >= 20, watch.samples
    assert watch.lost() == []
    for prober in probers:
        assert len(prober.results) >= 10
        assert prober.failures == []
    for instance, config in configs.items():
        cfg = load(config)
        cert = cfg.certificate(instance)
        expected = {KeyType(k): v.spki_sha256 for k, v in after[instance].current.items()}
        results = verify_live(cert, resolvers=cfg.resolvers, expected=expected)
        assert results and all(r.ok for r in results), results
    conflicts = sum(o.count("changed under us") for o in outputs)
    print(
        f"two rollovers at once: {took:.1f} s, {len(watch.samples)} samples, "
        f"{conflicts} CAS retries, probes {[len(p.results) for p in probers]}"
    )


class RacedProvider:
    """A provider whose first read is followed by another host's write to the same RRset:
    exactly the window a compare-and-swap must catch (RFC 2136 §2.4.2 prerequisite)."""

    def __init__(self, inner: DnsProvider, other: RRset) -> None:
        self.inner, self.other, self.name = inner, other, inner.name
        self.raced = False

    def read(self, name: str, rdtype: str) -> RRset | None:
        seen = self.inner.read(name, rdtype)
        if not self.raced:
            self.raced = True
            rdatas = (seen.rdatas if seen else frozenset()) | self.other.rdatas
            self.inner.replace(self.other.with_rdatas(rdatas), expected=seen)
        return seen

    def replace(self, rrset: RRset, expected: Any = None) -> Any:
        return self.inner.replace(rrset, expected=expected)

    def delete(self, name: str, rdtype: str, expected: Any = None) -> Any:
        return self.inner.delete(name, rdtype, expected=expected)

    def wait_in_sync(self, change: Any, timeout: float) -> None:
        self.inner.wait_in_sync(change, timeout)


def test_a_write_racing_ours_on_the_shared_name_is_reread_not_overwritten(
    testbed: Testbed, shared_name: None, tmp_path: Path
) -> None:
    provider = dns(testbed)
    theirs = {f"3 1 1 {'a' * 64}", f"3 1 1 {'b' * 64}"}
    provider.replace(RRset.of(SHARED_TLSA, "TLSA", TTL, theirs), expected=None)
    raced = {f"3 1 1 {'c' * 64}"}
    ours, old = {f"3 1 1 {'d' * 64}"}, {f"3 1 1 {'e' * 64}"}
    cfg = load(shared_configs(testbed, tmp_path)["mx1"])
    messages: list[str] = []
    ctx = Context(cfg, time.time, time.sleep, messages.append)
    racing = RacedProvider(provider, RRset.of(SHARED_TLSA, "TLSA", TTL, raced))
    after, change = dane_steps._swap_records(ctx, racing, SHARED_TLSA, ours, old, TTL)
    assert racing.raced and change is not None
    assert any("changed under us" in m for m in messages), messages
    served = provider.read(SHARED_TLSA, "TLSA")
    assert served is not None
    assert digests(served) == digests(after) == {r.split()[-1] for r in theirs | raced | ours}


# -- 2. dual RSA + ECDSA --------------------------------------------------------------------------


@pytest.fixture
def mx1(testbed: Testbed) -> None:
    fresh_instance(testbed, "mx1")


def test_dual_rsa_and_ecdsa_certificates_are_issued_published_served_and_rolled_over(
    testbed: Testbed, mx1: None, tmp_path: Path
) -> None:
    pf = testbed.postfix["mx1"]
    kinds = (KeyType.ECDSA_P256, KeyType.RSA2048)
    config = write_config(testbed, tmp_path, key_types=[k.value for k in kinds])
    bootstrap(config)
    before = state_of(config)
    assert before.phase is Phase.STEADY
    assert set(before.current) == set(before.next) == set(before.certs) == {k.value for k in kinds}
    chain_files = split_list(
        postfix_of(testbed, "mx1").get("smtpd_tls_chain_files")["smtpd_tls_chain_files"]
    )
    assert sorted(chain_files) == sorted(
        str(tmp_path / "postfix-files" / f"mx1-{k}.pem") for k in kinds
    )
    tlsa_name = f"_25._tcp.{pf.host}"
    assert digests(dns(testbed).read(tlsa_name, "TLSA")) == spkis(before.current) | spkis(
        before.next
    )
    for kind in kinds:
        chain = fetch_chain(pf.address, 25, timeout=5, key_type=kind)
        assert keys.cert_spki_sha256(chain[0]) == before.current[kind.value].spki_sha256
        assert len(chain) >= 2 and "Pebble" in chain[1].subject.rfc4514_string()
        assert f"{chain[0].serial_number:x}" == before.certs[kind.value].serial
    for offer in (OFFER_ECDSA_ONLY, OFFER_RSA_ONLY):
        ok, output = posttls_finger(testbed, pf.host, pf.address, offer)
        assert ok, output

    probers = [
        Prober(testbed, pf.host, pf.address),  # TLS 1.3: the server's preferred (ECDSA) chain
        Prober(testbed, pf.host, pf.address, options=OFFER_ECDSA_ONLY),
        Prober(testbed, pf.host, pf.address, options=OFFER_RSA_ONLY),
    ]
    with all_running(*probers):
        assert main(["--config", str(config), "rollover", "mx1"]) == 0
        time.sleep(AFTER_ROLLOVER)
    after = state_of(config)
    assert after.phase is Phase.STEADY
    assert after.current == before.next
    for kind in kinds:
        assert served_spki(pf.address, kind) == after.current[kind.value].spki_sha256
    records = digests(dns(testbed).read(tlsa_name, "TLSA"))
    assert records == spkis(after.current) | spkis(after.next)
    assert not records & spkis(before.current)
    for prober in probers:
        assert len(prober.results) >= 10
        assert prober.failures == []
    print(f"dual rollover: {len(records)} records, probes {[len(p.results) for p in probers]}")


# -- 3. a renewal with the same key changes no DNS record -----------------------------------------


def journal_tlsa_changes(bed: Testbed, name: str) -> list[str]:
    """The TLSA additions/deletions at ``name`` in the primary's journal of dane.test: every
    change an RFC 2136 UPDATE ever made to that RRset (not the RRSIG re-signings)."""
    journal = bed.dir / "bind-primary" / "dane.test.db.jnl"
    printed = subprocess.run(
        ["named-journalprint", str(journal)], capture_output=True, text=True, check=True
    ).stdout
    return [
        line
        for line in printed.splitlines()
        if line.split()[1:2] == [f"{name}."] and line.split()[4:5] == ["TLSA"]
    ]


def test_renewal_with_the_served_key_changes_no_tlsa_record(
    testbed: Testbed, mx1: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pf = testbed.postfix["mx1"]
    tlsa_name = f"_25._tcp.{pf.host}"
    config = write_config(testbed, tmp_path)
    bootstrap(config)
    rrset_before = dns(testbed).read(tlsa_name, "TLSA")
    journal_before = journal_tlsa_changes(testbed, tlsa_name)
    leaf_before = fetch_chain(pf.address, 25, timeout=5)[0]
    assert rrset_before is not None and journal_before

    from certman.dns.providers.rfc2136 import Rfc2136Provider

    writes: list[tuple[str, str]] = []
    replace, delete = Rfc2136Provider.replace, Rfc2136Provider.delete

    def spy_replace(self: Rfc2136Provider, rrset: RRset, expected: Any = None) -> Any:
        writes.append((rrset.name, rrset.rdtype))
        return replace(self, rrset, expected)

    def spy_delete(self: Rfc2136Provider, name: str, rdtype: str, expected: Any = None) -> Any:
        writes.append((name, rdtype))
        return delete(self, name, rdtype, expected)

    monkeypatch.setattr(Rfc2136Provider, "replace", spy_replace)
    monkeypatch.setattr(Rfc2136Provider, "delete", spy_delete)
    assert main(["--config", str(config), "issue", "mx1"]) == 0

    leaf_after = fetch_chain(pf.address, 25, timeout=5)[0]
    assert leaf_after.serial_number != leaf_before.serial_number
    assert keys.cert_spki_sha256(leaf_after) == keys.cert_spki_sha256(leaf_before)
    assert writes, "the DNS-01 challenge goes through the provider: the spy must see it"
    assert {rdtype for _, rdtype in writes} == {"TXT"}
    assert all(name.startswith("_acme-challenge.") for name, _ in writes), writes
    rrset_after = dns(testbed).read(tlsa_name, "TLSA")
    assert rrset_after == rrset_before  # rdatas and TTL
    assert journal_tlsa_changes(testbed, tlsa_name) == journal_before
    state = state_of(config)
    assert state.phase is Phase.STEADY
    assert state.certs["ecdsa-p256"].serial == f"{leaf_after.serial_number:x}"
    ok, output = testbed.posttls_finger(pf.host, pf.address)
    assert ok, output


# -- 4. verification fails while Postfix keeps serving the old certificate ------------------------


def test_failed_verification_rolls_back_and_a_later_run_completes_the_rollover(
    testbed: Testbed, mx1: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pf = testbed.postfix["mx1"]
    tlsa_name = f"_25._tcp.{pf.host}"
    config = write_config(testbed, tmp_path)
    bootstrap(config)
    before = state_of(config)
    old = before.current["ecdsa-p256"].spki_sha256
    nxt = before.next["ecdsa-p256"].spki_sha256

    # The install "succeeds" but the files Postfix reads never change: Postfix that did not
    # pick the new certificate up.
    monkeypatch.setattr("certman.postfix.install.apply", lambda record, *, postfix: None)
    cfg = load(config)
    ctx = Context(cfg, time.time, time.sleep)
    started = time.time()
    with pytest.raises(VerificationError, match="previous certificate restored"):
        advance(ctx, cfg.certificate("mx1"), request=Operation.ROLLOVER, max_wait=60)
    monkeypatch.undo()

    failed = state_of(config)
    assert failed.phase is Phase.STEADY
    assert failed.last_error and f"{pf.address}:25" in failed.last_error  # names the endpoint
    assert failed.retry_after is not None and failed.retry_after > time.time()
    assert failed.current == before.current and failed.next == before.next
    assert failed.staged == {} and failed.install_record is None
    assert served_spki(pf.address) == old
    assert {old, nxt} <= digests(dns(testbed).read(tlsa_name, "TLSA"))
    ok, output = testbed.posttls_finger(pf.host, pf.address)
    assert ok, output

    # A cron run during the back-off changes nothing, and exits 1: the certificate is in error
    # (docs/operations.md, "Exit codes").
    assert main(["--config", str(config), "run"]) == 1
    assert state_of(config).current == before.current
    assert served_spki(pf.address) == old

    # The back-off is over (as if the retry interval had passed): the next run retries the
    # rollover and completes it.
    cdir = CertDir.of(cfg.state_dir, "mx1")
    cdir.save(state_of(config).evolve(retry_after=started - 1))
    prober = Prober(testbed, pf.host, pf.address)
    with prober.running():
        assert main(["--config", str(config), "run", "--max-wait", "120"]) == 0
        time.sleep(AFTER_ROLLOVER)
    after = state_of(config)
    assert after.phase is Phase.STEADY and after.last_error is None
    assert after.current == before.next
    assert served_spki(pf.address) == nxt
    records = digests(dns(testbed).read(tlsa_name, "TLSA"))
    assert old not in records and nxt in records
    assert prober.failures == []
