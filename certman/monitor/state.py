"""Checks of certman's own records: errors and back-off, held rollovers, served keys it does not
know, certificate expiry from its files. Pure over the ``State`` and the clock, except reading
what Postfix serves."""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass

from certman.config.schema import CertificateConfig
from certman.lifecycle.state import Phase, State
from certman.monitor.result import Item, Severity

DAY = 86400.0


@dataclass(frozen=True)
class Thresholds:
    """The check's limits (docs/monitoring.md, "Thresholds"); each has a command-line option."""

    expiry_critical_days: float = 7.0  # served certificate: CRITICAL at this many days left
    renewal_grace: float = 2 * DAY  # WARNING once renewal is overdue by this much
    error_critical: float = DAY  # failing for this long (since the last success): CRITICAL
    hold_grace: float = 6 * 3600.0  # a rollover still not done this long after not_before
    dh_max_age_days: float | None = None  # None: the [dhparams] interval decides staleness


def _failing_since(state: State) -> float | None:
    """When the current run of failures began: the first ``error:`` after the last success."""
    since = None
    for entry in reversed(state.history):
        stamp, _, text = entry.partition(" ")
        if not text.startswith(("error:", "rolled back:")):
            break
        try:
            since = float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
        except ValueError:
            break
    if since is None:
        return state.last_success
    return since


def state_items(cert: CertificateConfig, state: State, now: float, t: Thresholds) -> list[Item]:
    name = cert.name
    if state.phase is Phase.NEW:
        return [
            Item(
                Severity.WARNING,
                "state",
                name,
                "no state yet",
                fix="run `certman run` to adopt what Postfix serves",
            )
        ]
    items = []
    if state.last_error:
        since = _failing_since(state)
        age = now - since if since is not None else 0.0
        backing = state.retry_after is not None and now < state.retry_after
        severity = Severity.CRITICAL if age >= t.error_critical else Severity.WARNING
        what = "backing off after" if backing else "last run failed"
        items.append(
            Item(
                severity,
                "state",
                name,
                f"{what}: {state.last_error} (failing for {age / 3600:.1f} h)",
                fix="see `certman status`; `certman run` retries",
            )
        )
    not_before = state.tlsa.not_before
    if state.phase is not Phase.STEADY and not_before and now > not_before + t.hold_grace:
        late = (now - not_before) / 3600
        items.append(
            Item(
                Severity.WARNING,
                "state",
                name,
                f"{state.operation} held in phase "
                f"{state.phase.value} {late:.1f} h past its not_before",
                why="the timer may not be running, or every run fails",
                fix="check `systemctl list-timers certman.timer` or the cron log",
            )
        )
    if not items:
        items.append(Item(Severity.OK, "state", name, f"phase {state.phase.value}, no error"))
    return items


def expiry_item(
    subject: str,
    not_before: float,
    not_after: float,
    renew_after: float | None,
    now: float,
    t: Thresholds,
) -> Item:
    """CRITICAL when expired or at ``expiry_critical_days`` left; WARNING past the renewal time
    (certman's, else 2/3 of the lifetime, as Let's Encrypt advises) plus ``renewal_grace``."""
    left = (not_after - now) / DAY
    renew = (
        renew_after if renew_after is not None else not_before + (not_after - not_before) * 2 / 3
    )
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(not_after))
    if left <= 0:
        return Item(Severity.CRITICAL, "expiry", subject, f"certificate expired {until}")
    if left <= t.expiry_critical_days:
        return Item(
            Severity.CRITICAL,
            "expiry",
            subject,
            f"certificate expires in {left:.1f} days ({until})",
            fix="`certman issue NAME`, then see `certman status`",
        )
    if now > renew + t.renewal_grace:
        return Item(
            Severity.WARNING,
            "expiry",
            subject,
            f"renewal overdue since "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(renew))}; "
            f"{left:.1f} days left",
            fix="see `certman status`",
        )
    return Item(Severity.OK, "expiry", subject, f"{left:.1f} days left ({until})")
