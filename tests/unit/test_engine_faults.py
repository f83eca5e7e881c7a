"""The engine under faults: write-ahead PUBLISH facts, recorded failures, rollback after the
switch, back-off, the CA's Retry-After, the CONFIRM clock, lost answers (issue 10, defects 1-8).

DNS is an in-memory provider here (the logic under test is the engine's); the same behaviour
is exercised against the real testbed by tests/integration/test_kill_points.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from certman.config.schema import (
    AcmeConfig,
    CertificateConfig,
    Challenge,
    Config,
    DaneConfig,
    DhMode,
    DhParamsConfig,
    InstallConfig,
    Layout,
    PostfixConfig,
    PropagationConfig,
    ProviderConfig,
    TlsaParams,
)
from certman.dns.propagation import Nameserver, PropagationReport, ZoneInfo
from certman.dns.provider import ANY, ChangeResult, Expected, RRset
from certman.errors import CertmanError, PropagationTimeout, ResolverUnreachable, RetryLater
from certman.lifecycle import engine, rollover
from certman.lifecycle.context import Context
from certman.lifecycle.rollover import Policy
from certman.lifecycle.state import Operation, Phase, State, TlsaProgress
from certman.lifecycle.statefile import CertDir
from certman.model import CertInfo, KeyInfo, KeyType

NOW = 1_800_000_000.0
SLOT = KeyType.ECDSA_P256.value


class Crash(BaseException):
    """Stands for SIGKILL: nothing in certman catches it, no failure gets recorded."""


@dataclass
class MemoryDns:
    """A provider contract implementation in a dict; can die after the Nth write."""

    name: str = "dns"
    zones: tuple[str, ...] = ("example.org",)
    rrsets: dict[str, RRset] = field(default_factory=dict)
    crash_after_writes: int | None = None
    fail_reads: BaseException | None = None
    writes: int = 0
    in_sync: list[ChangeResult] = field(default_factory=list)

    def read(self, name: str, rdtype: str) -> RRset | None:
        if self.fail_reads is not None:
            raise self.fail_reads
        return self.rrsets.get(name)

    def replace(self, rrset: RRset, expected: Expected = ANY) -> ChangeResult:
        self.rrsets[rrset.name] = rrset
        self.writes += 1
        if self.crash_after_writes is not None and self.writes >= self.crash_after_writes:
            raise Crash(f"killed after write {self.writes}")
        zone = next(z for z in self.zones if rrset.name.endswith(z))
        return ChangeResult(zone, None, change_id=f"C{self.writes}")

    def delete(self, name: str, rdtype: str, expected: Expected = ANY) -> ChangeResult:
        self.rrsets.pop(name, None)
        return ChangeResult(self.zones[0])

    def wait_in_sync(self, change: ChangeResult, timeout: float) -> None:
        self.in_sync.append(change)


@dataclass
class Clock:
    now: float = NOW
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def key(tag: str) -> KeyInfo:
    spki = (tag * 64)[:64]
    return KeyInfo(KeyInfo.make_id(KeyType.ECDSA_P256, spki), KeyType.ECDSA_P256, spki, NOW)


def make_config(
    tmp: Path, hosts: tuple[str, ...] = ("mx1.example.org",), ttl: int | None = 300
) -> Config:
    dane = DaneConfig(hosts, (25,), (TlsaParams(3, 1, 1),), ttl, 10.0, "dns", "127.0.0.1", 0)
    cert = CertificateConfig(
        name="mx",
        domains=hosts,
        key_types=(KeyType.ECDSA_P256,),
        challenge=Challenge.DNS01,
        dns_provider="dns",
        zone_providers={},
        http=None,
        dane=dane,
        install=InstallConfig(Layout.CHAIN_FILES, tmp / "postfix-files", True),
        renew_fraction=None,
        use_ari=False,
        profile=None,
    )
    acme = AcmeConfig(
        "https://127.0.0.1/dir", None, None, tmp / "acct.key", KeyType.ECDSA_P256,
        None, None, None, 10.0, 0,
    )  # fmt: skip
    return Config(
        path=tmp / "certman.toml",
        state_dir=tmp / "state",
        resolvers=("127.0.0.1",),
        acme=acme,
        providers={"dns": ProviderConfig("dns", "memory", None)},
        propagation=PropagationConfig(timeout=600.0, interval=2.0),
        postfix=PostfixConfig(tmp, "postconf", "postfix", None),
        certificates={"mx": cert},
        dhparams=DhParamsConfig(DhMode.OFF, (), 30, None, 19, 1),
    )


def context(cfg: Config, dns: MemoryDns, clock: Clock) -> Context:
    ctx = Context(cfg, clock, clock.sleep)
    ctx._providers["dns"] = dns
    return ctx


def zones(negative: dict[str, int]) -> Any:
    """A find_zone stand-in: each name's zone has its own negative TTL (SOA minimum)."""

    def find_zone(name: str, resolvers: object, timeout: float = 3.0, port: int = 53) -> ZoneInfo:
        zone = next(z for z in negative if name.endswith(z))
        ns = (Nameserver("ns1." + zone, ("127.0.0.1",)),)
        return ZoneInfo(zone, 86400, negative[zone], 1, ns)

    return find_zone


@pytest.fixture
def dns_world(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONFIRM never reports 'published' (the tests stop at CONFIRM), zones per name."""
    monkeypatch.setattr(
        "certman.dns.propagation.find_zone",
        zones({"example.org": 3600, "a.example": 60, "b.example": 1800}),
    )
    monkeypatch.setattr(
        "certman.dns.propagation.check_published",
        lambda name, rdtype, expected, **kw: PropagationReport(name, rdtype, False, ()),
    )


def publishing(**changes: Any) -> State:
    cur, nxt = key("a"), key("b")
    state = State(
        name="mx",
        phase=Phase.PUBLISH,
        operation=Operation.BOOTSTRAP,
        current={SLOT: cur},
        next={SLOT: nxt},
        certs={SLOT: CertInfo(cur.id, "01", NOW - 86400, NOW + 60 * 86400, None, "/x.pem")},
    )
    return state.evolve(**changes)


def saved(cfg: Config) -> State:
    return CertDir.of(cfg.state_dir, "mx").load("mx")


def put(cfg: Config, state: State) -> None:
    CertDir.of(cfg.state_dir, "mx").save(state)


# -- defect 1: write-ahead PUBLISH ----------------------------------------------------------------


@pytest.mark.usefixtures("dns_world")
def test_ttl_lowering_keeps_the_old_ttl_after_a_crash_between_dns_write_and_save(
    tmp_path: Path,
) -> None:
    cfg = make_config(tmp_path, ttl=300)
    name = "_25._tcp.mx1.example.org"
    dns = MemoryDns(rrsets={name: RRset.of(name, "TLSA", 3600, {f"3 1 1 {'a' * 64}"})})
    dns.crash_after_writes = 1
    clock = Clock()
    put(cfg, publishing())
    with pytest.raises(Crash):
        engine.advance(context(cfg, dns, clock), cfg.certificate("mx"))
    assert dns.rrsets[name].ttl == 300  # the write happened, the state save did not
    dns.crash_after_writes = None
    outcome = engine.advance(context(cfg, dns, clock), cfg.certificate("mx"))
    state = saved(cfg)
    assert outcome.waiting and state.phase is Phase.CONFIRM
    assert (state.tlsa.ttl_before, state.tlsa.ttl_after) == (3600, 300)
    assert state.tlsa.wait_seconds(0) == 7200  # 2 x the TTL caches may still hold


@pytest.mark.usefixtures("dns_world")
def test_empty_name_bootstrap_keeps_the_negative_ttl_after_a_crash(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, ttl=300)
    dns = MemoryDns(crash_after_writes=1)
    clock = Clock()
    put(cfg, publishing())
    with pytest.raises(Crash):
        engine.advance(context(cfg, dns, clock), cfg.certificate("mx"))
    dns.crash_after_writes = None
    engine.advance(context(cfg, dns, clock), cfg.certificate("mx"))
    tlsa = saved(cfg).tlsa
    assert tlsa.name_was_empty and tlsa.negative_ttl == 3600
    assert tlsa.wait_seconds(0) == 7200


@pytest.mark.usefixtures("dns_world")
def test_a_second_name_failing_keeps_the_first_names_facts(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, hosts=("mx1.b.example", "mx1.a.example"), ttl=60)
    dns = MemoryDns(zones=("a.example", "b.example"))
    clock = Clock()
    put(cfg, publishing())
    calls = {"n": 0}
    real_replace = dns.replace

    def flaky(rrset: RRset, expected: Expected = ANY) -> ChangeResult:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_replace(rrset, expected)

    dns.replace = flaky  # type: ignore[method-assign]
    with pytest.raises(CertmanError, match="OSError"):
        engine.advance(context(cfg, dns, clock), cfg.certificate("mx"))
    assert saved(cfg).publish_facts is not None
    clock.now = saved(cfg).retry_after or clock.now
    engine.advance(context(cfg, dns, clock), cfg.certificate("mx"))
    tlsa = saved(cfg).tlsa
    assert tlsa.name_was_empty and tlsa.negative_ttl == 1800  # b.example's: both were empty
    assert saved(cfg).publish_facts is None  # consumed by the finished PUBLISH


# -- defect 2: per-zone negative TTL --------------------------------------------------------------


@pytest.mark.usefixtures("dns_world")
def test_negative_ttl_is_the_largest_of_each_names_own_zone(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, hosts=("mx1.a.example", "mx1.b.example"), ttl=60)
    dns = MemoryDns(zones=("a.example", "b.example"))
    put(cfg, publishing())
    engine.advance(context(cfg, dns, Clock()), cfg.certificate("mx"))
    tlsa = saved(cfg).tlsa
    assert tlsa.negative_ttl == 1800  # b.example's, not the first name's zone (60)
    assert tlsa.wait_seconds(0) == 3600


# -- defect 3: Route 53's INSYNC for TLSA changes -------------------------------------------------


@pytest.mark.usefixtures("dns_world")
def test_every_tlsa_change_waits_for_the_providers_in_sync_signal(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, hosts=("mx1.example.org", "mx2.example.org"))
    dns = MemoryDns()
    put(cfg, publishing())
    engine.advance(context(cfg, dns, Clock()), cfg.certificate("mx"))
    assert [c.change_id for c in dns.in_sync] == ["C1", "C2"]


# -- defect 4: every failure recorded; rollback after the switch ----------------------------------


@pytest.mark.usefixtures("dns_world")
def test_an_unexpected_exception_is_recorded_with_a_back_off(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    dns = MemoryDns(fail_reads=ValueError("bad\ncertificate"))
    put(cfg, publishing())
    with pytest.raises(CertmanError) as caught:
        engine.advance(context(cfg, dns, Clock()), cfg.certificate("mx"))
    assert "\n" not in str(caught.value) and "ValueError: bad certificate" in str(caught.value)
    state = saved(cfg)
    assert state.last_error == str(caught.value)
    assert state.retry_after == NOW + 60.0 and state.failures == 1
    assert state.phase is Phase.PUBLISH


def _verifying(tmp_path: Path) -> tuple[Config, State]:
    cfg = make_config(tmp_path)
    nxt = key("b")
    staged = CertInfo(nxt.id, "02", NOW, NOW + 90 * 86400, None, "/y.pem")
    state = publishing(
        phase=Phase.VERIFY,
        operation=Operation.ROLLOVER,
        staged={SLOT: staged},
        install_record='{"plan": 1}',
    )
    return cfg, state


def test_an_exception_during_verify_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, state = _verifying(tmp_path)
    put(cfg, state)
    rolled: list[State] = []

    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError("probe returned a malformed certificate")

    monkeypatch.setattr("certman.lifecycle.steps.deploy.verify", boom)
    monkeypatch.setattr(
        "certman.lifecycle.steps.deploy.rollback", lambda ctx, cert, st: rolled.append(st)
    )
    with pytest.raises(CertmanError, match="previous certificate restored"):
        engine.advance(context(cfg, MemoryDns(), Clock()), cfg.certificate("mx"))
    assert len(rolled) == 1 and rolled[0].install_record == '{"plan": 1}'
    after = saved(cfg)
    assert after.phase is Phase.STEADY and after.operation is Operation.ROLLOVER
    assert after.current[SLOT] == key("a")  # the old key is still the served one
    assert "ValueError" in (after.last_error or "") and after.retry_after is not None


def test_a_reload_failure_after_the_switch_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, state = _verifying(tmp_path)
    put(cfg, state.evolve(phase=Phase.INSTALL))
    rolled: list[State] = []

    def install(ctx: Context, cert: object, cdir: CertDir, st: State) -> tuple[State, bool]:
        raise CertmanError("postfix reload: exit status 1: fatal: bad main.cf")

    monkeypatch.setattr("certman.lifecycle.steps.deploy.install", install)
    monkeypatch.setattr(
        "certman.lifecycle.steps.deploy.rollback", lambda ctx, cert, st: rolled.append(st)
    )
    with pytest.raises(CertmanError, match="previous certificate restored"):
        engine.advance(context(cfg, MemoryDns(), Clock()), cfg.certificate("mx"))
    assert len(rolled) == 1
    assert saved(cfg).phase is Phase.STEADY


def test_a_failing_rollback_is_retried_by_the_next_run_without_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, state = _verifying(tmp_path)
    put(cfg, state.evolve(phase=Phase.ROLLBACK, last_error="mismatch"))
    attempts: list[int] = []

    def rollback(ctx: Context, cert: object, st: State) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError(30, "Read-only file system")

    monkeypatch.setattr("certman.lifecycle.steps.deploy.rollback", rollback)
    with pytest.raises(CertmanError, match="OSError"):
        engine.advance(context(cfg, MemoryDns(), Clock()), cfg.certificate("mx"))
    assert saved(cfg).phase is Phase.ROLLBACK
    with pytest.raises(CertmanError, match="previous certificate restored"):
        engine.advance(context(cfg, MemoryDns(), Clock()), cfg.certificate("mx"))
    assert len(attempts) == 2 and saved(cfg).phase is Phase.STEADY


# -- defect 8: back-off, Retry-After, the CONFIRM clock, lost answers -----------------------------


def test_back_off_starts_short_and_grows_to_the_cap() -> None:
    policy = Policy(dane=True, margin=0, rollover_days=0)
    delays = [
        rollover.retry_delay(State(name="x", phase=Phase.CONFIRM, failures=n), policy)
        for n in range(8)
    ]
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_a_compromised_rollover_retries_at_the_propagation_interval() -> None:
    policy = Policy(dane=True, margin=0, rollover_days=0, propagation_interval=2.0)
    state = State(name="x", phase=Phase.CONFIRM, operation=Operation.COMPROMISED, failures=5)
    assert rollover.retry_delay(state, policy) == 2.0


@pytest.mark.usefixtures("dns_world")
def test_after_a_propagation_timeout_the_next_attempt_gets_a_whole_timeout(
    tmp_path: Path,
) -> None:
    cfg = make_config(tmp_path)
    clock = Clock()
    tlsa = TlsaProgress(written_at=NOW - 700, ttl_after=300)
    put(cfg, publishing(phase=Phase.CONFIRM, tlsa=tlsa))
    ctx = context(cfg, MemoryDns(), clock)
    with pytest.raises(PropagationTimeout):
        engine.advance(ctx, cfg.certificate("mx"))
    first = saved(cfg)
    assert first.retry_after == NOW + 60 and first.tlsa.confirm_since == first.retry_after
    clock.now = first.retry_after + 30  # a later run, well within a fresh timeout
    outcome = engine.advance(ctx, cfg.certificate("mx"))
    assert outcome.waiting and saved(cfg).failures == 0  # not yet published; no new failure


def test_issue_and_rollover_honour_the_cas_retry_after(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    state = publishing(phase=Phase.STEADY, operation=None, ca_retry_after=NOW + 3000)
    put(cfg, state)
    ctx = context(cfg, MemoryDns(), Clock())
    for request in (Operation.RENEW, Operation.ROLLOVER):
        with pytest.raises(RetryLater) as caught:
            engine.advance(ctx, cfg.certificate("mx"), request=request)
        assert caught.value.exit_code == 75 and caught.value.not_before == NOW + 3000


@pytest.mark.parametrize("server_asked", [True, False])
def test_only_the_cas_own_retry_after_is_kept_for_issue_and_rollover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_asked: bool
) -> None:
    cfg = make_config(tmp_path)
    put(cfg, publishing(phase=Phase.ISSUE, operation=Operation.RENEW))

    def issue(*args: object) -> None:
        raise RetryLater("ACME server x: rateLimited", NOW + 7200, server_asked=server_asked)

    monkeypatch.setattr("certman.lifecycle.steps.issue.issue", issue)
    with pytest.raises(RetryLater):
        engine.advance(context(cfg, MemoryDns(), Clock()), cfg.certificate("mx"))
    state = saved(cfg)
    assert state.retry_after == NOW + 7200 and state.phase is Phase.ISSUE
    assert state.ca_retry_after == (NOW + 7200 if server_asked else None)


def test_a_lost_resolver_answer_is_asked_again_within_the_step(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    clock = Clock()
    ctx = Context(cfg, clock, clock.sleep)
    answers = iter(
        [ResolverUnreachable("no resolver answered"), ResolverUnreachable("again"), None]
    )

    def ask() -> str:
        outcome = next(answers)
        if outcome is not None:
            raise outcome
        return "answer"

    assert ctx.retrying(ask) == "answer"
    assert clock.slept == [2.0, 2.0]


def test_lost_answers_give_up_after_the_propagation_timeout(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    clock = Clock()
    ctx = Context(cfg, clock, clock.sleep)

    def ask() -> str:
        raise ResolverUnreachable("no validating resolver answered")

    with pytest.raises(ResolverUnreachable):
        ctx.retrying(ask)
    assert sum(clock.slept) >= cfg.propagation.timeout


# -- one certificate's failure never stops the others or the DH step ------------------------------


def test_run_goes_on_after_a_certificate_fails_unexpectedly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse
    from dataclasses import replace

    from certman.cli import unattended

    base = make_config(tmp_path)
    mx = base.certificate("mx")
    certs = {n: replace(mx, name=n) for n in ("first", "second", "third")}
    cfg = replace(base, certificates=certs)
    advanced: list[str] = []
    dh_runs: list[int] = []

    def advance(ctx: Context, cert: CertificateConfig, **kwargs: object) -> engine.Outcome:
        advanced.append(cert.name)
        if cert.name == "first":
            raise KeyError("staged chain\nmissing")
        if cert.name == "second":
            raise OSError(28, "No space left on device")
        return engine.Outcome(cert.name, State(name=cert.name, phase=Phase.STEADY), "nothing")

    monkeypatch.setattr(unattended, "_load", lambda args: cfg)
    monkeypatch.setattr("certman.lifecycle.engine.advance", advance)

    def dhparams(c: Config, log: object, batch: object) -> int:
        dh_runs.append(1)
        return 0

    monkeypatch.setattr(unattended, "_run_dhparams", dhparams)
    args = argparse.Namespace(names=[], quiet=False, max_wait=0.0, config=None)
    assert unattended.cmd_run(args) == 1
    assert advanced == ["first", "second", "third"] and dh_runs == [1]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].endswith("certman: first: KeyError: 'staged chain\\nmissing'")
    assert err[1].endswith("certman: second: OSError: [Errno 28] No space left on device")
