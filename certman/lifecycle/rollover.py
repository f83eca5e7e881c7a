"""The DANE rollover as a pure state machine: ``decide()`` names the next step.

The rules (RFC 7671 §8.1, §8.4; RFC 7672; Dukhovni's "current + next"):

* the TLSA RRset holds a record for the key served now ("current") and the key served next;
* a key is never served before its record has been seen on every authoritative nameserver and
  2 x TTL have passed since (``TlsaProgress.not_before``);
* the record of a key Postfix serves is never removed; the old key's record goes only after the
  new chain was verified live on every endpoint (operation RETIRE);
* renewals reuse the current key, so they never touch DNS.

Nothing here does I/O or reads the clock: the engine hands ``now`` in and performs the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from certman.lifecycle.state import Operation, Phase, State, TlsaProgress
from certman.model import KeyInfo

DAY = 86400.0


class Action(StrEnum):
    ADOPT = "adopt"  # find the key Postfix serves, stage the next key
    BEGIN = "begin"  # start ``Step.operation``
    PUBLISH = "publish"  # compare-and-swap our records into every TLSA RRset
    CONFIRM = "confirm"  # one propagation round on every authoritative nameserver
    ISSUE = "issue"  # certificates for the target keys
    INSTALL = "install"  # write the files Postfix reads, switch, reload
    VERIFY = "verify"  # STARTTLS to every endpoint against the validated RRset
    ROLLBACK = "rollback"  # put the previous files back, reload
    FINISH = "finish"  # records aged, nothing to install: back to steady state
    CHECK_ARI = "check-ari"  # ask the CA for its suggested renewal window (RFC 9773)


@dataclass(frozen=True)
class Policy:
    dane: bool  # TLSA records are managed for this certificate
    margin: float  # seconds added to 2 x TTL
    rollover_days: int  # 0: keys roll only when asked
    ari: bool = False  # ask the CA's renewalInfo for when to renew
    retry_interval: float = 3600.0  # the longest back-off after failed attempts
    retry_base: float = 60.0  # the first back-off; doubles with each consecutive failure
    propagation_interval: float = 1.0  # a compromised key's rollover retries this often


@dataclass(frozen=True)
class Step:
    """Either an action to perform now, or a time to wait until, or nothing to do."""

    action: Action | None
    reason: str
    wait_until: float | None = None
    operation: Operation | None = None

    @property
    def done(self) -> bool:
        return self.action is None and self.wait_until is None


def decide(state: State, now: float, policy: Policy, request: Operation | None = None) -> Step:
    """The next step for ``state`` at ``now``; ``request`` is what the operator asked for."""
    if state.phase is Phase.NEW:
        return Step(Action.ADOPT, "first run: adopt the served key and stage a next key")
    retrying = state.retry_after is not None and now < state.retry_after
    # A rollback is never postponed: files that failed verification must not stay served.
    if retrying and request is None and state.phase not in (Phase.AGE, Phase.ROLLBACK):
        assert state.retry_after is not None
        return Step(None, f"backing off after: {state.last_error}", wait_until=state.retry_after)
    if state.phase is Phase.STEADY:
        return _idle(state, now, policy, request)
    if state.phase is Phase.AGE:
        not_before = state.tlsa.not_before or now
        if now < not_before:
            reason = (
                "waiting for smtpd processes started before the reload to finish"
                if state.operation is Operation.RETIRE
                else "waiting for cached TLSA answers to expire"
            )
            return Step(None, reason, wait_until=not_before)
        if state.operation is Operation.BOOTSTRAP and state.certs:
            return Step(Action.FINISH, "records aged on every resolver")
        if state.operation is Operation.RETIRE:
            return Step(Action.PUBLISH, "retire the old key's record, publish a new next key")
        return Step(Action.ISSUE, "records aged on every resolver")
    phase_action = {
        Phase.PUBLISH: (Action.PUBLISH, "publish TLSA records"),
        Phase.CONFIRM: (Action.CONFIRM, "confirm records on every authoritative nameserver"),
        Phase.ISSUE: (Action.ISSUE, "obtain certificate"),
        Phase.INSTALL: (Action.INSTALL, "install certificate and reload Postfix"),
        Phase.VERIFY: (Action.VERIFY, "verify the live server against its TLSA records"),
        Phase.ROLLBACK: (Action.ROLLBACK, "restore the previous certificate"),
    }
    action, reason = phase_action[state.phase]
    return Step(action, reason)


def _idle(state: State, now: float, policy: Policy, request: Operation | None) -> Step:
    if request is not None:
        return Step(Action.BEGIN, f"{request.value} requested", operation=request)
    if state.operation is Operation.ROLLOVER:  # rolled back earlier (after_rollback)
        return Step(
            Action.BEGIN, "retry the rolled-back key rollover", operation=Operation.ROLLOVER
        )
    if state.own_key_due and state.certs:  # adopted another certificate's key (issue 12)
        return Step(
            Action.BEGIN,
            "the served key is another certificate's: roll to this certificate's own key",
            operation=Operation.ROLLOVER,
        )
    if not state.certs or set(state.current) - set(state.certs):
        # e.g. a dual RSA + ECDSA setup adopted from a host that served only one key type
        return Step(Action.BEGIN, "a served key has no certificate yet", operation=Operation.RENEW)
    if state.renew_after is not None and now >= state.renew_after:
        return Step(Action.BEGIN, "certificate renewal due", operation=Operation.RENEW)
    ari_due = state.ari_recheck_at is None or now >= state.ari_recheck_at
    if policy.ari and ari_due:
        return Step(Action.CHECK_ARI, "ask the CA for its renewal window (RFC 9773)")
    if policy.dane and state.next and state.next_ready_at is None:
        # The next keys' records were never confirmed (e.g. a failed RETIRE): publish them.
        return Step(Action.BEGIN, "next key not yet published", operation=Operation.RETIRE)
    if policy.rollover_days and state.current:
        born = min(k.created for k in state.current.values())
        if now >= born + policy.rollover_days * DAY:
            return Step(Action.BEGIN, "scheduled key rollover due", operation=Operation.ROLLOVER)
    return Step(None, "nothing to do")


def next_change(state: State, now: float, policy: Policy) -> float:
    """The earliest time after ``now`` at which ``decide(state, t, policy)`` may differ from
    ``decide(state, now, policy)`` (``inf`` if never): every clock comparison ``decide`` makes
    is against one of these instants. The cron fast path trusts this, so a test checks it."""
    instants = [state.retry_after, state.tlsa.not_before, state.renew_after, state.ari_recheck_at]
    if policy.rollover_days and state.current:
        born = min(k.created for k in state.current.values())
        instants.append(born + policy.rollover_days * DAY)
    later = [t for t in instants if t is not None and t > now]
    return min(later, default=float("inf"))


# -- which keys, which records --------------------------------------------------------------------


def target_keys(state: State) -> dict[str, KeyInfo]:
    """The keys the running operation will serve: the next ones for a rollover."""
    if state.operation in (Operation.ROLLOVER, Operation.COMPROMISED):
        return state.next
    return state.current


def wanted_keys(state: State) -> list[KeyInfo]:
    """The keys whose records belong in DNS now: always the served ones, and the next ones."""
    keys = {k.spki_sha256: k for k in (*state.current.values(), *state.next.values())}
    return list(keys.values())


def owned_spkis(state: State) -> set[str]:
    """Every key this certificate ever published: records of these are ours to remove."""
    keys = (*state.current.values(), *state.next.values(), *state.previous.values())
    return {k.spki_sha256 for k in keys} | set(state.retired)


# -- transitions ---------------------------------------------------------------------------------


def begin(state: State, operation: Operation, now: float, policy: Policy) -> State:
    """Start ``operation`` from STEADY (the engine generates keys for COMPROMISED/RETIRE first)."""
    state = state.evolve(operation=operation, retry_after=None, last_error=None, staged={})
    if operation is Operation.RENEW:
        return state.evolve(phase=Phase.ISSUE)
    if operation is Operation.RETIRE:
        return state.evolve(phase=Phase.PUBLISH if policy.dane else Phase.STEADY)
    if not policy.dane:
        return state.evolve(phase=Phase.ISSUE)
    if operation is Operation.ROLLOVER and state.next_ready_at is not None:
        # The next key has been published all along: only its age can hold us up.
        tlsa = TlsaProgress(not_before=state.next_ready_at)
        return state.evolve(phase=Phase.AGE, tlsa=tlsa)
    return state.evolve(phase=Phase.PUBLISH)


def after_adopt(state: State, policy: Policy) -> State:
    state = state.evolve(operation=Operation.BOOTSTRAP)
    if policy.dane:
        return state.evolve(phase=Phase.PUBLISH)
    return state.evolve(phase=Phase.STEADY if state.certs else Phase.ISSUE)


def after_publish(state: State, progress: TlsaProgress, retired: set[str]) -> State:
    return state.evolve(
        phase=Phase.CONFIRM,
        tlsa=progress,
        publish_facts=None,
        retired=tuple(sorted(set(state.retired) | retired)),
        previous={} if state.operation is Operation.RETIRE else state.previous,
    )


def after_confirm(state: State, confirmed_at: float, policy: Policy) -> State:
    """Start the 2 x TTL clock; wait only if a key is about to be served on the strength of it."""
    not_before = confirmed_at + state.tlsa.wait_seconds(policy.margin)
    tlsa = TlsaProgress(
        **{**state.tlsa.__dict__, "confirmed_at": confirmed_at, "not_before": not_before}
    )
    state = state.evolve(tlsa=tlsa, next_ready_at=not_before)
    # A bootstrap waits too: until then validating resolvers may hold "no TLSA" (RFC 2308), and
    # a renewal right after it must find the served key's record in every cache.
    # So does a staged certificate whose issuer record was just published (opt-in 2 1 x).
    waits = (Operation.ROLLOVER, Operation.COMPROMISED, Operation.BOOTSTRAP)
    if state.operation in waits or state.staged:
        return state.evolve(phase=Phase.AGE)
    return finish(state, confirmed_at, "records confirmed")


def after_issue(state: State, staged: dict[str, object]) -> State:
    return state.evolve(phase=Phase.INSTALL, staged=staged)


def after_install(state: State, record: str) -> State:
    return state.evolve(phase=Phase.VERIFY, install_record=record)


def after_verify(state: State, now: float, renew_after: float | None, grace: float = 0.0) -> State:
    """The live server serves the target keys and matches DNS: make them current.

    The old key's record goes ``grace`` seconds later: smtpd processes started before the
    reload may still take a connection or two with the old key until they notice it (seen on
    the testbed within a second of the reload), and its record must outlive them.
    """
    state = state.evolve(
        certs={**state.certs, **state.staged},
        staged={},
        install_record=None,
        renew_after=renew_after,
        ari_recheck_at=None,  # a new certificate: ask for its renewal window on the next run
        last_success=now,
    )
    if state.operation in (Operation.ROLLOVER, Operation.COMPROMISED):
        state = state.evolve(
            previous=state.current,
            current=state.next,
            next={},
            own_key_due=False,
            next_ready_at=None,
            operation=Operation.RETIRE,
            phase=Phase.AGE,
            tlsa=TlsaProgress(not_before=now + grace),
        )
        return state.note(now, "new key live and verified; retiring the old key's record")
    return finish(state, now, "certificate live and verified")


def after_rollback(state: State, now: float, error: str, policy: Policy) -> State:
    """Back to the served key; a rolled-back key rollover stays pending (``operation`` ROLLOVER
    in STEADY) and is retried after the back-off, as a failed renewal is (its ``renew_after``
    stays due). After a COMPROMISED one the fresh next key is already published: promote it."""
    rolling = (Operation.ROLLOVER, Operation.COMPROMISED)
    state = state.evolve(
        phase=Phase.STEADY,
        operation=Operation.ROLLOVER if state.operation in rolling else None,
        staged={},
        install_record=None,
        reload_pending=False,  # the rollback reloaded
        last_error=error,
        retry_after=now + retry_delay(state, policy),
        failures=state.failures + 1,
    )
    return state.note(now, f"rolled back: {error}")


def finish(state: State, now: float, message: str) -> State:
    done = state.operation.value if state.operation else "run"
    state = state.evolve(phase=Phase.STEADY, operation=None, last_success=now, last_error=None)
    return state.note(now, f"{done} finished: {message}")


def retry_delay(state: State, policy: Policy) -> float:
    """The back-off after a failure: short at first, doubling with each consecutive failure up
    to ``retry_interval``, so a run after a brief outage re-checks cheaply what was behind. A
    compromised key's rollover keeps trying at the propagation interval: every minute it
    waits is a minute the compromised key stays in service."""
    if state.operation is Operation.COMPROMISED:
        return policy.propagation_interval
    return min(policy.retry_interval, policy.retry_base * 2.0 ** min(state.failures, 30))


def failed(state: State, now: float, error: str, retry_at: float) -> State:
    """Record an error; the phase stays, so the next run resumes where this one stopped."""
    state = state.evolve(last_error=error, retry_after=retry_at, failures=state.failures + 1)
    return state.note(now, f"error: {error}")
