"""Notifications (``[notify]``): one message per state change, by mail and/or a command.

Events: ``failure`` (a certificate starts failing), ``recovered`` (it stops), ``rollback``,
``rollover-finished`` (the new key is live and verified), ``expiring`` (fewer than
``expiring_days`` left), ``check-critical`` (``certman check`` turned CRITICAL). What was already
said is remembered in ``<state_dir>/notify.json``, so a failure that lasts a day is one message,
not 96. A delivery that fails is not remembered: the next run tries again.

Mail goes through the local Postfix: ``sendmail -C <config_dir> -i -- ADDRESS...`` (sendmail(1);
``-i``: a line with a single dot does not end the message), with ``Auto-Submitted:
auto-generated`` (RFC 3834) so that vacation responders stay quiet. The command gets the event
as one JSON object on stdin; its argv is fixed (no shell).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certman.config.schema import Config, NotifyConfig
from certman.lifecycle.state import State

Runner = Callable[..., subprocess.CompletedProcess[bytes]]


@dataclass(frozen=True)
class Event:
    kind: str
    certificate: str
    message: str
    time: float

    def to_json(self) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time))
        return {
            "event": self.kind,
            "certificate": self.certificate,
            "message": self.message,
            "time": stamp,
        }


def _new_history(state: State, last_seen: str | None) -> list[str]:
    if last_seen is None or last_seen not in state.history:
        return []  # first look (or history rotated past it): nothing old is news
    index = len(state.history) - 1 - state.history[::-1].index(last_seen)
    return list(state.history[index + 1 :])


def certificate_events(
    state: State, memory: Mapping[str, Any], now: float, expiring_days: float
) -> tuple[list[Event], dict[str, Any]]:
    """Pure: the events ``state`` means given what was said before, and what to remember."""
    name = state.name
    events = []
    if state.last_error and not memory.get("failing"):
        events.append(Event("failure", name, state.last_error, now))
    elif not state.last_error and memory.get("failing"):
        events.append(Event("recovered", name, "the last operation succeeded", now))
    for entry in _new_history(state, memory.get("history")):
        text = entry.partition(" ")[2]
        if text.startswith("rolled back:"):
            events.append(Event("rollback", name, text, now))
        elif text.startswith("new key live and verified"):
            events.append(Event("rollover-finished", name, text, now))
    left = min(((c.not_after - now) / 86400 for c in state.certs.values()), default=None)
    expiring = left is not None and left < expiring_days
    if expiring and not memory.get("expiring"):
        events.append(Event("expiring", name, f"the certificate expires in {left:.1f} days", now))
    remembered = {
        "failing": bool(state.last_error),
        "history": state.history[-1] if state.history else None,
        "expiring": expiring,
    }
    return events, remembered


def _memory_path(cfg: Config) -> Path:
    return cfg.state_dir / "notify.json"


def load_memory(cfg: Config) -> dict[str, Any]:
    try:
        data = json.loads(_memory_path(cfg).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_memory(cfg: Config, memory: Mapping[str, Any]) -> None:
    from certman.fsutil import atomic_write, private_dir

    private_dir(cfg.state_dir)
    text = json.dumps(memory, indent=2, sort_keys=True) + "\n"
    atomic_write(_memory_path(cfg), text.encode(), mode=0o600)


def message(event: Event, notify: NotifyConfig, host: str) -> bytes:
    """An RFC 5322 message for ``event``; the body names the command that shows more."""
    from email.message import EmailMessage
    from email.utils import formatdate

    msg = EmailMessage()
    if notify.sender:
        msg["From"] = notify.sender
    msg["To"] = ", ".join(notify.email)
    msg["Subject"] = f"certman on {host}: {event.certificate}: {event.kind}"
    msg["Date"] = formatdate(event.time, usegmt=True)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5
    body = json.dumps(event.to_json(), indent=2)
    msg.set_content(f"{event.message}\n\nMore: certman status {event.certificate}\n\n{body}\n")
    return bytes(msg)


def deliver(event: Event, cfg: Config, run: Runner = subprocess.run) -> list[str]:
    """Send ``event`` every configured way; the errors, one line each (empty: delivered)."""
    import socket

    notify = cfg.notify
    errors = []
    if notify.email:
        argv = [notify.sendmail, "-C", str(cfg.postfix.config_dir), "-i"]
        argv += ["-f", notify.sender] if notify.sender else []
        argv += ["--", *notify.email]
        errors += _run(argv, message(event, notify, socket.getfqdn()), run, "sendmail")
    if notify.command:
        payload = json.dumps(event.to_json()).encode() + b"\n"
        errors += _run(list(notify.command), payload, run, "notify command")
    return errors


def _run(argv: list[str], data: bytes, run: Runner, what: str) -> list[str]:
    try:
        done = run(argv, input=data, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"{what} {argv[0]}: {exc}"]
    if done.returncode != 0:
        detail = (done.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        return [f"{what} {argv[0]} exited {done.returncode}: {' '.join(detail)}"]
    return []


def notify_run(
    cfg: Config, states: Mapping[str, State], now: float, run: Runner = subprocess.run
) -> tuple[list[Event], list[str]]:
    """After a run: deliver what changed for each certificate; remember what was delivered."""
    memory = load_memory(cfg)
    sent: list[Event] = []
    errors: list[str] = []
    for name, state in states.items():
        events, remembered = certificate_events(
            state, memory.get(name, {}), now, cfg.notify.expiring_days
        )
        failed = [e for event in events for e in deliver(event, cfg, run)]
        errors += failed
        if not failed:
            sent += events
            memory[name] = remembered
    save_memory(cfg, memory)
    return sent, errors


def notify_check(
    cfg: Config, critical: bool, summary: str, now: float, run: Runner = subprocess.run
) -> list[str]:
    """After ``certman check``: one ``check-critical`` event when it turns CRITICAL."""
    memory = load_memory(cfg)
    was = bool(memory.get("_check", {}).get("critical"))
    errors: list[str] = []
    if critical and not was:
        errors = deliver(Event("check-critical", "*", summary, now), cfg, run)
    if not errors:
        memory["_check"] = {"critical": critical}
        save_memory(cfg, memory)
    return errors
