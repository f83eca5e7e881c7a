"""Read-only views for the CLI: status, zone records, rollover plans (checks: certman.monitor)."""

from __future__ import annotations

import time
from typing import Any

from certman.config.schema import CertificateConfig, Config
from certman.lifecycle import rollover
from certman.lifecycle.state import Phase, State
from certman.lifecycle.statefile import CertDir
from certman.model import KeyInfo


def _stamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _load_state(cfg: Config, cert: CertificateConfig) -> State:
    return CertDir.of(cfg.state_dir, cert.name).load(cert.name)


def _keys(label: str, keys: dict[str, KeyInfo]) -> list[str]:
    return [
        f"  {label:<8} {k.id}  3 1 1 {k.spki_sha256}  (since {_stamp(k.created)})"
        for k in keys.values()
    ]


def status_lines(cfg: Config, cert: CertificateConfig, now: float) -> list[str]:
    state = _load_state(cfg, cert)
    lines = [
        f"{cert.name}: phase {state.phase.value}"
        + (f" ({state.operation.value})" if state.operation else "")
    ]
    if state.phase is Phase.NEW:
        return [*lines, "  no state yet: `certman run` adopts what Postfix serves"]
    lines += _keys("current", state.current) + _keys("next", state.next)
    lines += _keys("previous", state.previous)
    for slot, info in state.certs.items():
        left = (info.not_after - now) / 86400
        lines.append(
            f"  cert     {slot} serial {info.serial} "
            f"expires {_stamp(info.not_after)} ({left:.1f} days)"
        )
    for slot, info in state.staged.items():
        lines.append(f"  staged   {slot} serial {info.serial} (not yet served)")
    if cert.dane is not None:
        lines.append(
            f"  tlsa     {', '.join(cert.dane.tlsa_names())} via provider {cert.dane.provider}"
        )
        lines.append(
            f"  tlsa     written {_stamp(state.tlsa.written_at)}, "
            f"confirmed {_stamp(state.tlsa.confirmed_at)}, "
            f"not before {_stamp(state.tlsa.not_before)}"
        )
        lines.append(f"  next key ready for use after {_stamp(state.next_ready_at)}")
    lines.append(f"  renewal  due {_stamp(state.renew_after)}")
    if state.last_error:
        lines.append(f"  error    {state.last_error}")
        lines.append(f"  retry    after {_stamp(state.retry_after)}")
    lines.append(f"  last ok  {_stamp(state.last_success)}")
    lines += [f"  history  {h}" for h in state.history[-5:]]
    return lines


def status_document(cfg: Config, cert: CertificateConfig, now: float) -> dict[str, Any]:
    """``certman status --json``: the state as saved (docs/schemas/status.json), no secrets
    (the state holds none), plus the derived facts the text form shows."""
    from certman.lifecycle.state import to_json

    state = _load_state(cfg, cert)
    doc = to_json(state)
    doc.pop("install_record", None)  # internal rollback record, not an interface
    doc["backing_off"] = bool(
        state.last_error and state.retry_after is not None and now < state.retry_after
    )
    doc["tlsa_names"] = cert.dane.tlsa_names() if cert.dane else []
    doc["days_left"] = {
        slot: round((info.not_after - now) / 86400, 3) for slot, info in state.certs.items()
    }
    return doc


def zone_document(cfg: Config, cert: CertificateConfig) -> dict[str, Any]:
    """``certman tlsa NAME --json`` (docs/schemas/tlsa.json)."""
    from certman.lifecycle.steps.dane import key_records

    doc: dict[str, Any] = {"certificate": cert.name, "records": []}
    if cert.dane is None:
        return doc
    state = _load_state(cfg, cert)
    if state.phase is Phase.NEW:
        return doc
    cdir = CertDir.of(cfg.state_dir, cert.name)
    ttl = cert.dane.ttl or 300
    records = sorted(key_records(cert, cdir, rollover.wanted_keys(state)))
    doc["records"] = [
        {"owner": name, "ttl": ttl, "rdata": r} for name in cert.dane.tlsa_names() for r in records
    ]
    return doc


def zone_records(cfg: Config, cert: CertificateConfig) -> list[str]:
    """``certman tlsa NAME``: the records of the current and next keys, in zone-file form."""
    from certman.lifecycle.steps.dane import key_records

    if cert.dane is None:
        return [f"; {cert.name}: no [certificates.{cert.name}.dane] section, no TLSA records"]
    state = _load_state(cfg, cert)
    if state.phase is Phase.NEW:
        return [f"; {cert.name}: no keys yet; run `certman run` first"]
    cdir = CertDir.of(cfg.state_dir, cert.name)
    ttl = cert.dane.ttl or 300
    records = sorted(key_records(cert, cdir, rollover.wanted_keys(state)))
    return [f"{name}. {ttl} IN TLSA {r}" for name in cert.dane.tlsa_names() for r in records]


def rollover_plan(cfg: Config, cert: CertificateConfig, *, compromised: bool) -> list[str]:
    """The steps ``certman rollover`` would take, from the saved state; changes nothing."""
    state = _load_state(cfg, cert)
    now = time.time()
    lines = [f"plan for {cert.name} ({'compromised-key rollover' if compromised else 'rollover'}):"]
    if state.phase is Phase.NEW:
        return [
            *lines,
            "  1. adopt the served key, stage and publish a next key (run `certman run` first)",
        ]
    if state.phase is not Phase.STEADY:
        lines.append(f"  0. finish the {state.operation} in progress (phase {state.phase.value})")
    step = 1
    if cert.dane is not None:
        names = ", ".join(cert.dane.tlsa_names())
        ready = state.next_ready_at
        if compromised or ready is None:
            ttl = cert.dane.ttl or 300
            lines.append(f"  {step}. publish the next key's TLSA record at {names}")
            lines.append(f"  {step + 1}. confirm it on every authoritative nameserver")
            lines.append(f"  {step + 2}. wait 2 x TTL ({ttl} s) + margin {cert.dane.margin:.0f} s")
            step += 3
        else:
            wait = max(0.0, ready - now)
            lines.append(
                f"  {step}. next key published and aged: "
                f"ready {'now' if wait == 0 else f'in {wait:.0f} s'}"
            )
            step += 1
    for key in state.next.values() if not compromised else state.current.values():
        label = key.id if not compromised else f"a fresh {key.key_type.value} key"
        lines.append(f"  {step}. issue a certificate for {', '.join(cert.domains)} with {label}")
    step += 1
    lines.append(
        f"  {step}. install into {cert.install.directory} "
        f"({cert.install.layout.value}), postfix reload"
    )
    if cert.dane is not None:
        lines.append(f"  {step + 1}. verify every endpoint against the DNSSEC-validated TLSA RRset")
        lines.append(f"  {step + 2}. remove the old key's record, publish a new next key")
    return lines


def compromise_notice(state: State) -> str:
    ttl = max((t for t in (state.tlsa.ttl_before, state.tlsa.ttl_after) if t), default=0)
    retired = state.tlsa.confirmed_at
    if retired is None:
        return "the compromised key's record is still published; run `certman run` to finish"
    return (
        f"the compromised key's record was removed from every nameserver at {_stamp(retired)}; "
        f"validating senders may still hold it until {_stamp(retired + ttl)} (TTL {ttl} s)"
    )
