"""Fleet mode, the run: read the lineage, lead when something is due and the lease is ours,
then bring this host to the fleet's target and report.

The lease holder drives the lineage through the same pure ``rollover.decide`` as a single host,
and performs the same steps (keys, TLSA publish/confirm once for the fleet, ACME issuance), except
two: INSTALL hands the staged certificates to the fleet (each host installs them on its next
run, ``fleethost.sync_host``), and VERIFY waits until every live host reports them verified.
Only then does the old key's record go (RFC 7671 §8.1: never remove the record of a key still
served). Before each action the leader renews its lease, after it the lineage is written with
``If-Match``: a leader that lost the lease or was fenced off by a newer term stops writing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from certman import keys
from certman.config.schema import CertificateConfig
from certman.errors import CertmanError, ConfigError
from certman.fleet import lease as leases
from certman.fleet.reports import readiness
from certman.fleet.store import LostRace, Store, default_client_factory
from certman.lifecycle import rollover
from certman.lifecycle.engine import failure_state, perform_shared, policy_for, unexpected
from certman.lifecycle.fleethost import (
    Fleet,
    HostResult,
    Lineage,
    cache_lineage,
    cached_lineage,
    fetch_keys,
    fleet_target,
    load_lineage,
    localize,
    read_reports,
    save_lineage,
    settled,
    sync_host,
    target_served,
    upload_new,
)
from certman.lifecycle.rollover import Action, Policy, Step
from certman.lifecycle.state import Operation, Phase, State

if TYPE_CHECKING:
    from certman.lifecycle.context import Context

VERIFY_POLL = 1.0  # seconds between two looks at the hosts' reports while waiting inline


@dataclass(frozen=True)
class FleetOutcome:
    name: str
    lineage: State
    reason: str
    leader: str | None  # who held the lease when we looked (us, if we led)
    host: HostResult | None
    requests: int  # S3 requests this run made for this certificate
    wait_until: float | None = None

    @property
    def waiting(self) -> bool:
        return self.wait_until is not None


def open_fleet(
    ctx: Context, cert: CertificateConfig, client_factory: Callable[[], object] | None = None
) -> Fleet:
    assert ctx.config.fleet is not None
    cfg = ctx.config.fleet
    factory = client_factory or default_client_factory(cfg)
    return Fleet(ctx, cert, cfg, Store(cfg, cert.name, factory))


def run(
    fleet: Fleet,
    *,
    request: Operation | None = None,
    max_wait: float = 0.0,
    on_wait: Callable[[Step, float], None] | None = None,
    wait_lock: bool = False,
) -> FleetOutcome:
    """One run for one certificate: lead if due and possible, then serve and report."""
    with fleet.host_dir.lock(wait=wait_lock):
        policy = policy_for(fleet.cert)
        quiet = None if request is not None else _nothing_due(fleet, policy, max_wait)
        if quiet is not None:
            return quiet
        lineage = load_lineage(fleet.store, fleet.cert.name)
        now = fleet.ctx.clock()
        cache_lineage(fleet.host_dir, lineage, now)
        step = rollover.decide(lineage.state, now, policy, request)
        leader, reason, wait_until = lineage.holder, step.reason, step.wait_until
        due = step.action is not None or (
            step.wait_until is not None and step.wait_until - now <= max_wait
        )
        if due and not fleet.cfg.lead:
            if request is not None:
                raise ConfigError(f"{fleet.ctx.config.path}: fleet.lead = false: ask a leader")
            reason = f"{step.reason} (left to a leading host: fleet.lead = false)"
        elif due:
            lineage, leader, reason, wait_until = _lead(
                fleet, lineage, policy, request, max_wait, on_wait
            )
            cache_lineage(fleet.host_dir, lineage, fleet.ctx.clock())
        serves = lineage.state.certs or lineage.state.staged
        host = sync_host(fleet, lineage.state) if serves else None
        return FleetOutcome(
            fleet.cert.name, lineage.state, reason, leader, host, fleet.store.requests, wait_until
        )


def _nothing_due(fleet: Fleet, policy: Policy, max_wait: float) -> FleetOutcome | None:
    """An idle run without any S3 request (nor boto3 import): the lineage read less than
    ``check_interval`` ago was at rest with nothing due, and this host serves it, reported."""
    cached = cached_lineage(fleet.host_dir)
    now = fleet.ctx.clock()
    if cached is None or now - cached[1] >= fleet.cfg.check_interval:
        return None
    lineage, fetched_at = cached
    if lineage.state.phase is not Phase.STEADY:
        return None
    step = rollover.decide(lineage.state, now, policy)
    if step.action is not None or (
        step.wait_until is not None and step.wait_until - now <= max_wait
    ):
        return None
    if not settled(fleet, lineage.state):
        return None
    reason = f"{step.reason} (fleet state read {now - fetched_at:.0f} s ago)"
    return FleetOutcome(fleet.cert.name, lineage.state, reason, lineage.holder, None, 0)


def _lead(
    fleet: Fleet,
    lineage: Lineage,
    policy: Policy,
    request: Operation | None,
    max_wait: float,
    on_wait: Callable[[Step, float], None] | None,
) -> tuple[Lineage, str | None, str, float | None]:
    ctx, cfg = fleet.ctx, fleet.cfg
    got = leases.acquire(fleet.store, fleet.me, ctx.clock(), cfg.lease_seconds)
    if isinstance(got, leases.Lease):
        if request is not None:
            raise LostRace(
                f"{fleet.store.where(leases.LEASE)}: {got.holder} leads the fleet until "
                f"{_iso(got.expires_at)}; run this there, or after the lease expires"
            )
        return lineage, got.holder, f"{got.holder} leads the fleet (lease term {got.term})", None
    held = got
    lineage = load_lineage(fleet.store, fleet.cert.name)  # as it is now that we hold the lease
    if lineage.term > held.lease.term:
        raise LostRace(f"{fleet.store.where('state.json')}: written by a newer leader")
    if lineage.term < held.lease.term:  # fence off any earlier leader (see fleet.lease)
        lineage = save_lineage(fleet.store, lineage, lineage.state, held.lease.term, fleet.me)
        ctx.progress(f"{fleet.cert.name}: leading the fleet (lease term {held.lease.term})")
    lineage, reason, wait_until = _drive(fleet, lineage, held, policy, request, max_wait, on_wait)
    return lineage, fleet.me, reason, wait_until


def _drive(
    fleet: Fleet,
    lineage: Lineage,
    held: leases.Held,
    policy: Policy,
    request: Operation | None,
    max_wait: float,
    on_wait: Callable[[Step, float], None] | None,
) -> tuple[Lineage, str, float | None]:
    """The engine's loop over the lineage, renewing the lease before every action."""
    ctx, cfg, store = fleet.ctx, fleet.cfg, fleet.store
    said = ""
    # Polls (propagation, the hosts' reports) end at the run's budget, not only per wait.
    deadline = ctx.clock() + max_wait
    while True:
        now = ctx.clock()
        step = rollover.decide(lineage.state, now, policy, request)
        if step.action is Action.BEGIN:
            request = None
        if step.done or (step.wait_until is not None and step.wait_until - now > max_wait):
            leases.release(store, held, ctx.clock())
            return lineage, step.reason, step.wait_until
        if step.wait_until is not None:
            if on_wait:
                on_wait(step, step.wait_until - now)
            ctx.sleep(max(0.0, min(step.wait_until - now, 1.0)))
            if held.lease.expires_at - ctx.clock() < cfg.lease_seconds / 2:
                held = leases.renew(store, held, ctx.clock(), cfg.lease_seconds)
            continue
        # Renewed before every action, so it outlasts the action; while only polling the hosts'
        # reports (VERIFY, which writes nothing until they are all in), at half-time.
        polling = step.action is Action.VERIFY and step.reason == said
        if not polling or held.lease.expires_at - now < cfg.lease_seconds / 2:
            held = leases.renew(store, held, now, cfg.lease_seconds)
        if step.reason != said:
            ctx.progress(f"{fleet.cert.name}: fleet: {step.reason}")
            said = step.reason
        if step.action is Action.PUBLISH and lineage.state.publish_facts is None:
            lineage = _write_ahead(fleet, lineage, held)
        before = lineage.state
        state, wait_until = _perform_guarded(fleet, lineage, held, before, step, policy)
        if state != before:
            upload_new(fleet, before, state, fleet.lead_dir)
            lineage = save_lineage(store, lineage, state, held.lease.term, fleet.me)
        if wait_until is not None:
            if wait_until > deadline:
                leases.release(store, held, ctx.clock())
                return lineage, step.reason, wait_until
            ctx.sleep(max(0.0, wait_until - ctx.clock()))


def _write_ahead(fleet: Fleet, lineage: Lineage, held: leases.Held) -> Lineage:
    """The facts about the TLSA RRsets as they were (TTLs, emptiness, each zone's negative TTL),
    in the fleet's lineage before the first DNS write: a leader that dies midway, or the next
    one, repeats the PUBLISH with them and never with what it wrote itself (issue 10)."""
    from certman.lifecycle.steps import dane as dane_steps

    facts = dane_steps.facts_before(fleet.ctx, fleet.cert)
    state = lineage.state.evolve(publish_facts=facts)
    return save_lineage(fleet.store, lineage, state, held.lease.term, fleet.me)


def _perform_guarded(
    fleet: Fleet, lineage: Lineage, held: leases.Held, state: State, step: Step, policy: Policy
) -> tuple[State, float | None]:
    """``_perform``, every failure recorded in the lineage (last error, back-off) as one line;
    an exception that is not certman's becomes a CertmanError naming the action."""
    try:
        done, wait = _perform(fleet, state, step, policy)
    except LostRace:
        raise
    except Exception as exc:
        error = exc if isinstance(exc, CertmanError) else unexpected(step, exc)
        failed = failure_state(state, fleet.ctx.clock(), error, policy)
        save_lineage(fleet.store, lineage, failed, held.lease.term, fleet.me)
        if error is exc:
            raise
        raise error from None
    if done.failures and step.action is not Action.ROLLBACK:
        done = done.evolve(failures=0)  # the back-off starts short again after a success
    return done, wait


def _perform(fleet: Fleet, state: State, step: Step, policy: Policy) -> tuple[State, float | None]:
    """The leader's own ADOPT, INSTALL, VERIFY and ROLLBACK; the rest as on a single host."""
    from certman.lifecycle.steps import keys as key_steps

    ctx, cert, wdir = fleet.ctx, fleet.cert, fleet.lead_dir
    now = ctx.clock()
    every = [*state.current.values(), *state.next.values(), *state.previous.values()]
    fetch_keys(fleet, every, wdir)
    fetch_keys(fleet, every, fleet.host_dir)  # dane_steps reads keys there (3 1 2 records)
    state = localize(fleet, state, wdir)
    match step.action:
        case Action.ADOPT:
            # The fleet adopts no host's key: one fresh current + next key for the lineage.
            current = {k.value: key_steps.new_key(wdir, k, now) for k in cert.key_types}
            nxt = {k.value: key_steps.new_key(wdir, k, now) for k in cert.key_types}
            state = state.evolve(current=current, next=nxt, certs={})
            state = state.note(now, f"fleet lineage created by {fleet.me}")
            return rollover.after_adopt(state, policy), None
        case Action.PUBLISH:
            state = key_steps.ensure_next_keys(ctx, cert, wdir, state)
            _copy_keys(fleet, state)  # facts: saved ahead to the lineage (_write_ahead)
        case Action.INSTALL:
            # Each host installs the staged certificates on its next run (fleethost.sync_host).
            state = state.note(now, "certificates handed to the fleet")
            return state.evolve(phase=Phase.VERIFY), None
        case Action.VERIFY:
            return _fleet_verified(fleet, state, now, policy)
        case Action.ROLLBACK:
            return rollover.after_rollback(state, now, state.last_error or "", policy), None
    return perform_shared(ctx, cert, wdir, state, step, policy)


def _copy_keys(fleet: Fleet, state: State) -> None:
    """Keys the leader just made, also where ``dane_steps`` looks for them."""
    for info in (*state.current.values(), *state.next.values()):
        target = fleet.host_dir.key_file(info.id)
        if not target.exists():
            keys.write_private_key(target, keys.read_private_key(fleet.lead_dir.key_file(info.id)))


def _fleet_verified(
    fleet: Fleet, state: State, now: float, policy: Policy
) -> tuple[State, float | None]:
    """Serve it here too, then: every live host verified? (the retirement gate)"""
    from certman.lifecycle import renewal

    sync_host(fleet, state)
    want_keys, want_certs = fleet_target(state)
    reports = read_reports(fleet.store)
    ready = readiness(reports, target_served(want_keys, want_certs), now, fleet.cfg.silent_after)
    if not ready.ready:
        return state, fleet.ctx.clock() + VERIFY_POLL
    if ready.silent:
        names = ", ".join(ready.silent)
        state = state.note(now, f"hosts silent, not waited for: {names}")
    renew = renewal.renew_after(fleet.cert, state)
    state = state.note(now, f"every live host verified ({len(reports) - len(ready.silent)})")
    return rollover.after_verify(state, now, renew, policy.margin), None


def forget(fleet: Fleet, host: str) -> None:
    """``certman fleet forget HOST``: the host left the fleet; its report no longer counts."""
    name = f"hosts/{host}.json"
    if fleet.store.get(name) is None:
        raise CertmanError(f"{fleet.store.where(name)}: no report from host {host!r}")
    fleet.store.delete(name)


def _iso(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
