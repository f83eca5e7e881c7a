"""Property tests of the pure state machine (hypothesis): whatever the TTLs, the delays between
runs, the failures and the operator's requests,

* a key is never installed before its record was confirmed on every nameserver and 2 x TTL
  (the largest TTL a cache may hold, negative TTL included) have passed since;
* the record of a key Postfix serves is never removed;
* ``decide()`` never returns a non-finite wait.

The simulation performs each step with the pure transitions of ``rollover`` and a model of DNS
and Postfix: what is published (and when it was confirmed) and which key is served.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certman.lifecycle import rollover
from certman.lifecycle.rollover import Action, Policy
from certman.lifecycle.state import Operation, Phase, State, TlsaProgress
from certman.model import CertInfo, KeyInfo, KeyType

SLOT = KeyType.ECDSA_P256.value
START = 1_800_000_000.0
finite_times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)


@dataclass
class World:
    """DNS and Postfix as the simulation sees them."""

    published: dict[str, float | None] = field(default_factory=dict)  # spki -> confirmed at
    ttl_seen: int = 0  # the largest TTL (or negative TTL) any cache may hold for the name
    served: str | None = None
    keys_made: int = 0

    def key(self, now: float) -> KeyInfo:
        self.keys_made += 1
        spki = f"{self.keys_made:064x}"
        return KeyInfo(KeyInfo.make_id(KeyType.ECDSA_P256, spki), KeyType.ECDSA_P256, spki, now)


@dataclass(frozen=True)
class Script:
    ttl: int
    negative_ttl: int
    lowered_ttl: int
    margin: float
    delays: list[float]
    confirm_ok: list[bool]
    verify_ok: list[bool]
    requests: list[int]


scripts = st.builds(
    Script,
    ttl=st.integers(1, 7200),
    negative_ttl=st.integers(0, 7200),
    lowered_ttl=st.integers(1, 7200),
    margin=st.floats(0, 600, allow_nan=False),
    delays=st.lists(st.floats(0, 20000, allow_nan=False), min_size=60, max_size=60),
    confirm_ok=st.lists(st.booleans(), min_size=60, max_size=60),
    verify_ok=st.lists(st.booleans(), min_size=60, max_size=60),
    requests=st.lists(st.integers(0, 5), min_size=60, max_size=60),
)

REQUESTS = [None, None, None, Operation.ROLLOVER, Operation.COMPROMISED, Operation.RENEW]


def check_step(step: rollover.Step) -> None:
    if step.wait_until is not None:
        assert math.isfinite(step.wait_until), step


def perform(state: State, step: rollover.Step, now: float, world: World, s: Script, i: int,
            policy: Policy) -> State:  # fmt: skip
    match step.action:
        case Action.ADOPT:
            cur = world.key(now)
            world.served = cur.spki_sha256
            state = state.evolve(current={SLOT: cur}, next={SLOT: world.key(now)})
            return rollover.after_adopt(state, policy)
        case Action.BEGIN:
            assert step.operation is not None
            if step.operation is Operation.COMPROMISED:
                retired = tuple(k.spki_sha256 for k in state.next.values())
                fresh = {SLOT: world.key(now)}
                state = state.evolve(next=fresh, next_ready_at=None, retired=retired)
            return rollover.begin(state, step.operation, now, policy)
        case Action.PUBLISH:
            if not state.next:
                state = state.evolve(next={SLOT: world.key(now)}, next_ready_at=None)
            wanted = {k.spki_sha256 for k in rollover.wanted_keys(state)}
            # Never remove the record of the key Postfix serves.
            assert world.served is None or world.served in wanted
            empty = not world.published
            before = world.ttl_seen or None
            for spki in set(world.published) - wanted:
                del world.published[spki]
            for spki in wanted - set(world.published):
                world.published[spki] = None
            # The operator may lower (or raise) the TTL: caches still hold the old one.
            new_ttl = s.lowered_ttl if i % 3 == 0 else s.ttl
            world.ttl_seen = max(world.ttl_seen, new_ttl, s.negative_ttl if empty else 0)
            progress = TlsaProgress(
                written_at=now,
                ttl_before=before,
                ttl_after=new_ttl,
                negative_ttl=s.negative_ttl,
                name_was_empty=empty,
            )
            return rollover.after_publish(state, progress, set())
        case Action.CONFIRM:
            if not s.confirm_ok[i]:
                return rollover.failed(
                    state, now, "lagging", now + rollover.retry_delay(state, policy)
                )
            for spki, confirmed in world.published.items():
                if confirmed is None:
                    world.published[spki] = now
            return rollover.after_confirm(state, now, policy)
        case Action.ISSUE:
            targets = rollover.target_keys(state)
            staged = {
                slot: CertInfo(k.id, f"{i:x}", now, now + 90 * 86400, None, "/x")
                for slot, k in targets.items()
            }
            return rollover.after_issue(state, dict(staged))
        case Action.INSTALL:
            for key in rollover.target_keys(state).values():
                confirmed = world.published.get(key.spki_sha256)
                # Never serve a key whose record was not confirmed and aged (RFC 7671 §8.1).
                assert confirmed is not None, "installing a key whose record was never confirmed"
                assert now >= confirmed + 2 * world.ttl_seen, (now - confirmed, world.ttl_seen)
                world.served = key.spki_sha256
            return rollover.after_install(state, "{}")
        case Action.VERIFY:
            if s.verify_ok[i]:
                return rollover.after_verify(state, now, now + 60 * 86400, policy.margin)
            return state.evolve(phase=Phase.ROLLBACK, last_error="mismatch")
        case Action.ROLLBACK:
            world.served = state.current[SLOT].spki_sha256
            return rollover.after_rollback(state, now, "mismatch", policy)
        case Action.FINISH:
            return rollover.finish(state, now, "aged")
        case Action.CHECK_ARI:
            return state.evolve(ari_checked_at=now, ari_recheck_at=now + 86400)
    raise AssertionError(step)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts)
def test_no_unaged_key_is_served_no_served_record_removed_no_infinite_wait(
    script: Script,
) -> None:
    policy = Policy(dane=True, margin=script.margin, rollover_days=30)
    state, world, now = State(name="mx"), World(), START
    for i in range(60):
        request = REQUESTS[script.requests[i]] if state.phase is Phase.STEADY else None
        for _ in range(20):  # one run: act until told to wait
            step = rollover.decide(state, now, policy, request)
            check_step(step)
            if step.action is Action.BEGIN:
                request = None
            if step.action is None:
                break
            state = perform(state, step, now, world, script, i, policy)
            if state.last_error and step.action is Action.CONFIRM:
                break
        now += script.delays[i]


phases = st.sampled_from(list(Phase))
operations = st.one_of(st.none(), st.sampled_from(list(Operation)))
opt_times = st.one_of(st.none(), finite_times)


@st.composite
def states(draw: st.DrawFn) -> State:
    key = KeyInfo("k", KeyType.ECDSA_P256, "a" * 64, draw(finite_times))
    nxt = KeyInfo("n", KeyType.ECDSA_P256, "b" * 64, draw(finite_times))
    cert = CertInfo("k", "1", 0.0, draw(finite_times), None, "/x")
    tlsa = TlsaProgress(
        written_at=draw(opt_times),
        ttl_before=draw(st.one_of(st.none(), st.integers(0, 10**6))),
        ttl_after=draw(st.one_of(st.none(), st.integers(0, 10**6))),
        negative_ttl=draw(st.one_of(st.none(), st.integers(0, 10**6))),
        name_was_empty=draw(st.booleans()),
        confirmed_at=draw(opt_times),
        not_before=draw(opt_times),
    )
    return State(
        name="mx",
        phase=draw(phases),
        operation=draw(operations),
        current={SLOT: key} if draw(st.booleans()) else {},
        next={SLOT: nxt} if draw(st.booleans()) else {},
        certs={SLOT: cert} if draw(st.booleans()) else {},
        tlsa=tlsa,
        next_ready_at=draw(opt_times),
        renew_after=draw(opt_times),
        ari_recheck_at=draw(opt_times),
        retry_after=draw(opt_times),
        failures=draw(st.integers(0, 10**6)),
        last_error=draw(st.one_of(st.none(), st.just("boom"))),
    )


@settings(max_examples=500, deadline=None)
@given(
    state=states(),
    now=finite_times,
    request=st.one_of(st.none(), st.sampled_from(list(Operation))),
    margin=st.floats(0, 86400, allow_nan=False),
    ari=st.booleans(),
)
def test_decide_never_returns_a_non_finite_wait_for_any_loadable_state(
    state: State, now: float, request: Operation | None, margin: float, ari: bool
) -> None:
    policy = Policy(dane=True, margin=margin, rollover_days=30, ari=ari)
    step = rollover.decide(state, now, policy, request)
    check_step(step)
    assert math.isfinite(rollover.retry_delay(state, policy))
    if step.action is Action.ISSUE and state.phase is Phase.AGE:
        assert state.tlsa.not_before is None or now >= state.tlsa.not_before
