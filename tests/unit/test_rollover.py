"""The pure rollover state machine: which step comes next, and how long the wait must be."""

from __future__ import annotations

from certman.lifecycle import rollover
from certman.lifecycle.rollover import Action, Policy
from certman.lifecycle.state import Operation, Phase, State, TlsaProgress
from certman.model import CertInfo, KeyInfo, KeyType

POLICY = Policy(dane=True, margin=10.0, rollover_days=30)
NOW = 1_800_000_000.0


def key(tag: str, created: float = NOW) -> KeyInfo:
    spki = (tag * 64)[:64]
    return KeyInfo(KeyInfo.make_id(KeyType.ECDSA_P256, spki), KeyType.ECDSA_P256, spki, created)


def cert_for(k: KeyInfo, not_after: float = NOW + 60 * 86400) -> CertInfo:
    return CertInfo(k.id, "01", NOW - 86400, not_after, None, "/x.pem")


def steady(**changes: object) -> State:
    cur, nxt = key("a"), key("b")
    base = State(
        name="mx1",
        phase=Phase.STEADY,
        current={"ecdsa-p256": cur},
        next={"ecdsa-p256": nxt},
        certs={"ecdsa-p256": cert_for(cur)},
        next_ready_at=NOW - 100,
        renew_after=NOW + 30 * 86400,
    )
    return base.evolve(**changes)


def test_first_run_adopts() -> None:
    assert rollover.decide(State(name="mx1"), NOW, POLICY).action is Action.ADOPT


def test_steady_state_with_nothing_due_is_done() -> None:
    assert rollover.decide(steady(), NOW, POLICY).done


def test_renewal_due_begins_renew_without_touching_dns() -> None:
    state = steady(renew_after=NOW - 1)
    step = rollover.decide(state, NOW, POLICY)
    assert (step.action, step.operation) == (Action.BEGIN, Operation.RENEW)
    begun = rollover.begin(state, Operation.RENEW, NOW, POLICY)
    assert begun.phase is Phase.ISSUE
    assert rollover.target_keys(begun) == state.current


def test_scheduled_rollover_after_rollover_days() -> None:
    old = key("a", created=NOW - 31 * 86400)
    state = steady(current={"ecdsa-p256": old})
    step = rollover.decide(state, NOW, POLICY)
    assert step.operation is Operation.ROLLOVER


def test_rollover_of_aged_next_key_goes_straight_to_issue() -> None:
    begun = rollover.begin(steady(), Operation.ROLLOVER, NOW, POLICY)
    assert begun.phase is Phase.AGE
    assert rollover.decide(begun, NOW, POLICY).action is Action.ISSUE
    assert rollover.target_keys(begun) == steady().next


def test_rollover_waits_until_next_key_has_aged() -> None:
    begun = rollover.begin(steady(next_ready_at=NOW + 50), Operation.ROLLOVER, NOW, POLICY)
    step = rollover.decide(begun, NOW, POLICY)
    assert step.action is None and step.wait_until == NOW + 50


def test_rollover_of_unpublished_next_key_publishes_first() -> None:
    begun = rollover.begin(steady(next_ready_at=None), Operation.ROLLOVER, NOW, POLICY)
    assert rollover.decide(begun, NOW, POLICY).action is Action.PUBLISH


def test_wait_is_twice_the_largest_ttl_plus_margin() -> None:
    progress = TlsaProgress(ttl_before=60, ttl_after=300, negative_ttl=3600, name_was_empty=False)
    assert progress.wait_seconds(10) == 610


def test_negative_ttl_counts_when_the_name_was_empty() -> None:
    progress = TlsaProgress(ttl_before=None, ttl_after=30, negative_ttl=90, name_was_empty=True)
    assert progress.wait_seconds(0) == 180


def test_confirm_starts_the_clock_and_rollover_waits_in_age() -> None:
    state = steady(phase=Phase.CONFIRM, operation=Operation.ROLLOVER)
    state = state.evolve(tlsa=TlsaProgress(ttl_before=5, ttl_after=5, negative_ttl=3))
    aged = rollover.after_confirm(state, NOW, POLICY)
    assert aged.phase is Phase.AGE
    assert aged.tlsa.not_before == NOW + 2 * 5 + POLICY.margin
    step = rollover.decide(aged, NOW + 1, POLICY)
    assert step.wait_until == NOW + 20
    assert rollover.decide(aged, NOW + 20, POLICY).action is Action.ISSUE


def test_retire_confirm_finishes_without_waiting() -> None:
    state = steady(phase=Phase.CONFIRM, operation=Operation.RETIRE)
    state = state.evolve(tlsa=TlsaProgress(ttl_before=300, ttl_after=300))
    done = rollover.after_confirm(state, NOW, POLICY)
    assert done.phase is Phase.STEADY and done.operation is None
    assert done.next_ready_at == NOW + 610


def test_verified_rollover_promotes_next_and_retires_old() -> None:
    state = steady(phase=Phase.VERIFY, operation=Operation.ROLLOVER)
    old_current, old_next = state.current, state.next
    after = rollover.after_verify(state, NOW, NOW + 10, grace=5.0)
    assert after.current == old_next
    assert after.previous == old_current
    assert after.next == {}
    assert (after.phase, after.operation) == (Phase.AGE, Operation.RETIRE)
    # The old record outlives smtpd processes started before the reload.
    assert rollover.decide(after, NOW + 1, POLICY).wait_until == NOW + 5
    assert rollover.decide(after, NOW + 5, POLICY).action is Action.PUBLISH


def test_old_record_stays_wanted_until_retire_publishes() -> None:
    state = steady(phase=Phase.VERIFY, operation=Operation.ROLLOVER)
    wanted = {k.spki_sha256 for k in rollover.wanted_keys(state)}
    assert wanted == {key("a").spki_sha256, key("b").spki_sha256}


def test_served_key_is_always_wanted() -> None:
    state = steady(phase=Phase.PUBLISH, operation=Operation.RETIRE, previous={"x": key("a")})
    state = state.evolve(current={"ecdsa-p256": key("b")}, next={"ecdsa-p256": key("c")})
    wanted = {k.spki_sha256 for k in rollover.wanted_keys(state)}
    assert key("b").spki_sha256 in wanted
    assert key("a").spki_sha256 not in wanted
    assert key("a").spki_sha256 in rollover.owned_spkis(state)


def test_rollback_keeps_keys_and_backs_off() -> None:
    state = steady(phase=Phase.ROLLBACK, operation=Operation.ROLLOVER)
    after = rollover.after_rollback(state, NOW, "mismatch", POLICY)
    assert after.current == state.current and after.next == state.next
    assert after.phase is Phase.STEADY and after.last_error == "mismatch"
    step = rollover.decide(after, NOW + 1, POLICY)
    assert step.wait_until == NOW + POLICY.retry_base  # the first back-off is the short one


def test_rolled_back_rollover_is_retried_after_the_back_off() -> None:
    for operation in (Operation.ROLLOVER, Operation.COMPROMISED):
        state = steady(phase=Phase.ROLLBACK, operation=operation)
        after = rollover.after_rollback(state, NOW, "mismatch", POLICY)
        delay = rollover.retry_delay(state, POLICY)
        assert rollover.decide(after, NOW + 0.5, POLICY).wait_until == NOW + delay
        step = rollover.decide(after, NOW + POLICY.retry_interval, POLICY)
        assert (step.action, step.operation) == (Action.BEGIN, Operation.ROLLOVER)
        begun = rollover.begin(after, Operation.ROLLOVER, NOW + POLICY.retry_interval, POLICY)
        assert begun.phase is Phase.AGE  # the next key's record aged long ago
        assert rollover.target_keys(begun) == state.next


def test_rolled_back_renewal_leaves_nothing_pending() -> None:
    state = steady(phase=Phase.ROLLBACK, operation=Operation.RENEW)
    after = rollover.after_rollback(state, NOW, "mismatch", POLICY)
    assert after.operation is None
    assert rollover.decide(after, NOW + POLICY.retry_interval, POLICY).done


def test_a_served_key_type_without_a_certificate_is_issued_one() -> None:
    """Dual RSA + ECDSA adopted from a host serving only ECDSA: the RSA key needs a certificate
    now, whatever the ECDSA certificate's renewal time or the CA's ARI window."""
    rsa = KeyInfo(KeyInfo.make_id(KeyType.RSA2048, "f" * 64), KeyType.RSA2048, "f" * 64, NOW)
    state = steady()
    state = state.evolve(current={**state.current, "rsa2048": rsa})
    policy = Policy(dane=True, margin=0, rollover_days=0, ari=True)
    step = rollover.decide(state.evolve(ari_recheck_at=None), NOW, policy)
    assert (step.action, step.operation) == (Action.BEGIN, Operation.RENEW)
    assert (
        rollover.target_keys(rollover.begin(state, Operation.RENEW, NOW, policy)) == state.current
    )


def test_failure_in_progress_backs_off_but_resumes_same_phase() -> None:
    state = steady(phase=Phase.ISSUE, operation=Operation.RENEW)
    failed = rollover.failed(state, NOW, "rate limited", NOW + 600)
    assert rollover.decide(failed, NOW + 1, POLICY).wait_until == NOW + 600
    assert rollover.decide(failed, NOW + 601, POLICY).action is Action.ISSUE


def test_operator_request_overrides_schedule() -> None:
    step = rollover.decide(steady(), NOW, POLICY, Operation.COMPROMISED)
    assert (step.action, step.operation) == (Action.BEGIN, Operation.COMPROMISED)


def test_without_dane_rollover_skips_dns() -> None:
    policy = Policy(dane=False, margin=0, rollover_days=0)
    assert rollover.begin(steady(), Operation.ROLLOVER, NOW, policy).phase is Phase.ISSUE


def test_bootstrap_with_served_cert_ages_then_finishes() -> None:
    state = steady(phase=Phase.CONFIRM, operation=Operation.BOOTSTRAP)
    state = state.evolve(tlsa=TlsaProgress(ttl_after=5, negative_ttl=3, name_was_empty=True))
    aged = rollover.after_confirm(state, NOW, POLICY)
    assert aged.phase is Phase.AGE
    assert rollover.decide(aged, NOW + 1, POLICY).wait_until == NOW + 20
    assert rollover.decide(aged, NOW + 20, POLICY).action is Action.FINISH


def test_ari_window_is_asked_for_once_then_at_recheck_time() -> None:
    policy = Policy(dane=True, margin=0, rollover_days=0, ari=True)
    assert rollover.decide(steady(), NOW, policy).action is Action.CHECK_ARI
    checked = steady(ari_recheck_at=NOW + 3600)
    assert rollover.decide(checked, NOW, policy).done
    assert rollover.decide(checked, NOW + 3600, policy).action is Action.CHECK_ARI


def test_new_certificate_resets_the_ari_recheck() -> None:
    state = steady(phase=Phase.VERIFY, operation=Operation.RENEW, ari_recheck_at=NOW + 99)
    assert rollover.after_verify(state, NOW, NOW + 10).ari_recheck_at is None


def test_a_due_renewal_is_not_postponed_by_an_ari_check() -> None:
    policy = Policy(dane=True, margin=0, rollover_days=0, ari=True)
    step = rollover.decide(steady(renew_after=NOW - 1), NOW, policy)
    assert step.operation is Operation.RENEW


def test_staged_certificate_waits_for_its_newly_published_issuer_record() -> None:
    k = key("a")
    state = steady(
        phase=Phase.CONFIRM, operation=Operation.RENEW, staged={"ecdsa-p256": cert_for(k)}
    )
    state = state.evolve(tlsa=TlsaProgress(ttl_before=5, ttl_after=5))
    aged = rollover.after_confirm(state, NOW, POLICY)
    assert aged.phase is Phase.AGE
    assert rollover.decide(aged, NOW + 20, POLICY).action is Action.ISSUE  # reuses the staged one
