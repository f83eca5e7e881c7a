"""The runner: take the lock, load the state, ask ``decide()``, perform one idempotent action, save.

A crash between an action and the save only repeats an idempotent action: publishing is a
compare-and-swap of the wanted RRset, confirming only reads, issuing reuses a staged certificate,
installing archives the served files once (the record is saved before the switch) and switching
to the same files again is harmless. Only the CLI sleeps; ``Context.sleep`` is its.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from certman.config.schema import CertificateConfig
from certman.errors import CertmanError, PropagationTimeout, RetryLater, VerificationError
from certman.lifecycle import rollover
from certman.lifecycle.context import Context
from certman.lifecycle.rollover import Action, Policy, Step
from certman.lifecycle.state import Operation, Phase, State
from certman.lifecycle.statefile import CertDir

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class Outcome:
    name: str
    state: State
    reason: str
    wait_until: float | None = None

    @property
    def waiting(self) -> bool:
        return self.wait_until is not None


def backing_off(outcome: Outcome, now: float) -> bool:
    """True while ``outcome``'s certificate waits out the back-off after a recorded failure:
    ``certman run`` exits 1 then (the certificate is in error), not 0."""
    state = outcome.state
    return (
        state.last_error is not None and state.retry_after is not None and now < state.retry_after
    )


def ca_asked_later(outcome: Outcome, now: float) -> bool:
    """True while the back-off is the CA's own Retry-After (RFC 8555 §6.6): temporary, exit 75
    like the failed attempt that stored it, not an error of ours."""
    state = outcome.state
    return (
        backing_off(outcome, now)
        and state.ca_retry_after is not None
        and now < state.ca_retry_after
        and state.retry_after is not None
        and state.retry_after <= state.ca_retry_after
    )


def policy_for(cert: CertificateConfig, propagation_interval: float = 1.0) -> Policy:
    dane = cert.dane
    return Policy(
        dane=dane is not None,
        margin=dane.margin if dane else 0.0,
        rollover_days=dane.rollover_days if dane else 0,
        ari=cert.use_ari,
        propagation_interval=propagation_interval,
    )


def advance(
    ctx: Context,
    cert: CertificateConfig,
    *,
    request: Operation | None = None,
    max_wait: float = 0.0,
    wait_lock: bool = False,
    on_wait: Callable[[Step, float], None] | None = None,
) -> Outcome:
    """Advance ``cert`` as far as it goes without waiting longer than ``max_wait`` at a time."""
    cdir = CertDir.of(ctx.config.state_dir, cert.name)
    policy = policy_for(cert, ctx.config.propagation.interval)
    with cdir.lock(wait=wait_lock):
        state = cdir.load(cert.name)
        _honour_ca_retry_after(cert, state, ctx.clock(), request, ctx.config.acme.directory)
        while True:
            now = ctx.clock()
            step = rollover.decide(state, now, policy, request)
            if step.action is Action.BEGIN:
                request = None
            if step.done:
                return Outcome(cert.name, state, step.reason)
            if step.wait_until is not None:
                if step.wait_until - now > max_wait:
                    return Outcome(cert.name, state, step.reason, step.wait_until)
                if on_wait:
                    on_wait(step, step.wait_until - now)
                ctx.sleep(max(0.0, min(step.wait_until - now, 1.0)))
                continue
            if step.action is Action.VERIFY and _waits_for_run_reload(ctx, cert, state):
                return Outcome(cert.name, state, RELOAD_WAIT)
            ctx.progress(f"{cert.name}: {step.reason}")
            state, wait_until = _perform_guarded(ctx, cert, cdir, state, step, policy)
            cdir.save(state)
            change = _change(step.action, state)
            if change:
                ctx.notice(f"{cert.name}: {change}")
            if step.action is Action.ROLLBACK:
                # Saved first: the rolled-back STEADY state must not be overwritten by the
                # failure path, which would leave the phase at ROLLBACK for every later run.
                raise VerificationError(
                    f"{cert.name}: {state.last_error}; previous certificate restored"
                )
            if wait_until is not None:
                state_wait = Step(None, step.reason, wait_until=wait_until)
                if wait_until - ctx.clock() > max_wait:
                    return Outcome(cert.name, state, state_wait.reason, wait_until)
                if on_wait:
                    on_wait(state_wait, wait_until - ctx.clock())
                ctx.sleep(max(0.0, wait_until - ctx.clock()))


RELOAD_WAIT = "new files switched in; Postfix reloads once for the whole run"


def _waits_for_run_reload(ctx: Context, cert: CertificateConfig, state: State) -> bool:
    """``certman run`` (``ctx.reloads``): a switched certificate waits for the run's one reload
    of its instance instead of reloading Postfix itself (``ReloadBatch``)."""
    if not state.reload_pending or ctx.reloads is None:
        return False
    return ctx.reloads.defer(cert.name, ctx.postfix_for(cert))


# One notice line per change to the outside world (log level 5), after it was saved.
_CHANGES = {
    Action.ADOPT: "adopted the key Postfix serves",
    Action.PUBLISH: "TLSA records written",
    Action.ISSUE: "certificate issued",
    Action.INSTALL: "new files switched in",
    Action.VERIFY: "live endpoints verified against the validated TLSA records",
    Action.ROLLBACK: "rolled back: previous files restored, Postfix reloaded",
    Action.FINISH: "operation finished",
}


def _change(action: Action | None, state: State) -> str | None:
    if action is Action.INSTALL and state.phase is not Phase.VERIFY:
        return None  # nothing was installed
    if action is Action.VERIFY and state.phase is Phase.ROLLBACK:
        return None  # the rollback says it
    return _CHANGES.get(action) if action is not None else None


def _honour_ca_retry_after(
    cert: CertificateConfig, state: State, now: float, request: Operation | None, server: str
) -> None:
    """`certman issue`/`rollover` skip the back-off, but not a Retry-After the CA gave (RFC 8555
    §6.6): asking again early only extends a rate limit."""
    if request is None or state.ca_retry_after is None or now >= state.ca_retry_after:
        return
    import time

    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.ca_retry_after))
    raise RetryLater(
        f"{cert.name}: ACME server {server} asked to retry after {when}", state.ca_retry_after
    )


def _perform_guarded(
    ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State, step: Step, policy: Policy
) -> tuple[State, float | None]:
    """``_perform``, with every exception recorded in the state (last error, back-off).

    Whatever an action raises, CertmanError or not, becomes a one-line CertmanError; once files
    Postfix reads may have been switched (INSTALL with a saved plan, VERIFY), a failure leads to
    ROLLBACK, which the engine performs next instead of leaving unverified files served.
    """
    try:
        if step.action in (Action.INSTALL, Action.ROLLBACK):
            with ctx.switching(cert):  # one switch at a time per Postfix instance
                done = _perform(ctx, cert, cdir, state, step, policy)
        else:
            done = _perform(ctx, cert, cdir, state, step, policy)
    except RetryLater as exc:
        now = ctx.clock()
        # A CA's Retry-After is kept as given; our own back-off for a CA that did not answer
        # grows like any other.
        retry_at = exc.not_before
        if not exc.server_asked:
            retry_at = max(retry_at, now + rollover.retry_delay(state, policy))
        failed = rollover.failed(state, now, str(exc), retry_at)
        if exc.server_asked:  # the CA's Retry-After (RFC 8555 §6.6), not a local back-off
            failed = failed.evolve(ca_retry_after=exc.not_before)
        _save_failure(cdir, failed)
        raise
    except Exception as exc:
        error = exc if isinstance(exc, CertmanError) else unexpected(step, exc)
        # An action may have saved facts midway (PUBLISH's write-ahead facts, INSTALL's plan).
        state = _reload(cdir, cert, state)
        rolled = _after_switch_failure(ctx, cert, cdir, state, str(error))
        if rolled is not None:
            return rolled, None
        _save_failure(cdir, failure_state(state, ctx.clock(), error, policy))
        if error is exc:
            raise
        raise error from None
    state, wait = done
    if state.failures and step.action is not Action.ROLLBACK:
        state = state.evolve(failures=0)
    return state, wait


def failure_state(state: State, now: float, error: Exception, policy: Policy) -> State:
    """``state`` after a failed action: the error, and a back-off that starts short and grows
    with each consecutive failure (``rollover.retry_delay``)."""
    failed = rollover.failed(state, now, str(error), now + rollover.retry_delay(state, policy))
    if isinstance(error, PropagationTimeout):
        # The next attempt gets a whole propagation timeout of its own.
        tlsa = replace(failed.tlsa, confirm_since=failed.retry_after)
        failed = failed.evolve(tlsa=tlsa)
    return failed


def unexpected(step: Step, exc: Exception) -> CertmanError:
    """One line for the operator, no traceback: the action, the exception type and message."""
    text = " ".join(str(exc).split()) or "no message"
    return CertmanError(f"{step.action}: {type(exc).__name__}: {text}")


def _after_switch_failure(
    ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State, error: str
) -> State | None:
    """The ROLLBACK state when a failure came after the files may have been switched."""
    saved = state
    switched = saved.phase is Phase.VERIFY or (
        saved.phase is Phase.INSTALL and saved.install_record is not None
    )
    if not switched:
        return None
    ctx.progress(f"{cert.name}: {error}; rolling back")
    rollback = saved.evolve(phase=Phase.ROLLBACK, last_error=error)
    _save_failure(cdir, rollback)
    return rollback


def _reload(cdir: CertDir, cert: CertificateConfig, state: State) -> State:
    try:
        return cdir.load(cert.name)
    except CertmanError:
        return state


def _save_failure(cdir: CertDir, state: State) -> None:
    """Save a failure; when even that fails (disk full), the last saved state stands and the
    next run repeats the idempotent action."""
    with contextlib.suppress(CertmanError):
        cdir.save(state)


def _perform(
    ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State, step: Step, policy: Policy
) -> tuple[State, float | None]:
    """The actions that touch this host; the rest are ``perform_shared``'s."""
    from certman.lifecycle import renewal
    from certman.lifecycle.steps import dane as dane_steps
    from certman.lifecycle.steps import deploy
    from certman.lifecycle.steps import keys as key_steps

    now = ctx.clock()
    match step.action:
        case Action.ADOPT:
            return rollover.after_adopt(key_steps.adopt(ctx, cert, cdir, state), policy), None
        case Action.PUBLISH:
            state = key_steps.ensure_next_keys(ctx, cert, cdir, state)
            if state.publish_facts is None:
                # Write-ahead: the facts about DNS as it was are saved before the first write.
                state = state.evolve(publish_facts=dane_steps.facts_before(ctx, cert))
                cdir.save(state)
        case Action.INSTALL:
            state, installed = deploy.install(ctx, cert, cdir, state)
            return (state.evolve(phase=Phase.VERIFY) if installed else state), None
        case Action.VERIFY:
            state = deploy.reload(ctx, cert, state)
            error = deploy.verify(ctx, cert, state)
            if error is None:
                renew = renewal.renew_after(cert, state)
                return rollover.after_verify(state, now, renew, policy.margin), None
            return state.evolve(phase=Phase.ROLLBACK, last_error=error), None
        case Action.ROLLBACK:
            error = state.last_error or "verification failed"
            deploy.rollback(ctx, cert, state)
            return rollover.after_rollback(state, ctx.clock(), error, policy), None
    return perform_shared(ctx, cert, cdir, state, step, policy)


def perform_shared(
    ctx: Context, cert: CertificateConfig, cdir: CertDir, state: State, step: Step, policy: Policy
) -> tuple[State, float | None]:
    """The actions a single host and a fleet's leader perform alike (keys in ``cdir``): BEGIN,
    PUBLISH (its facts saved ahead by the caller), CONFIRM, CHECK_ARI, FINISH, ISSUE."""
    from certman.lifecycle import renewal
    from certman.lifecycle.steps import dane as dane_steps
    from certman.lifecycle.steps import issue as issue_steps
    from certman.lifecycle.steps import keys as key_steps

    now = ctx.clock()
    match step.action:
        case Action.BEGIN:
            assert step.operation is not None
            state = key_steps.prepare_keys(ctx, cert, cdir, state, step.operation)
            return rollover.begin(state, step.operation, now, policy), None
        case Action.PUBLISH:
            assert state.publish_facts is not None  # saved before the first DNS write
            progress, retired, issuers = dane_steps.publish(ctx, cert, state, state.publish_facts)
            state = state.evolve(issuer_records=tuple(sorted(issuers)))
            return rollover.after_publish(state, progress, retired), None
        case Action.CONFIRM:
            confirmed = dane_steps.confirm(ctx, cert, state)
            if confirmed is None:
                from certman.dns.propagation import poll_pause

                settings = ctx.config.propagation
                waited = now - (state.tlsa.written_at or now)
                pause = poll_pause(waited, settings.first_interval, settings.interval)
                return state, now + pause
            return rollover.after_confirm(state, confirmed, policy), None
        case Action.CHECK_ARI:
            renew, recheck = renewal.check_ari(ctx, cert, state)
            return state.evolve(renew_after=renew, ari_checked_at=now, ari_recheck_at=recheck), None
        case Action.FINISH:
            return rollover.finish(state, now, "records published and aged"), None
        case Action.ISSUE:
            staged = issue_steps.issue(ctx, cert, cdir, state)
            return rollover.after_issue(state, dict(staged)), None
    raise AssertionError(f"unhandled step {step}")
