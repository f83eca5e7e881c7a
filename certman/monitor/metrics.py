"""The Prometheus textfile-collector file (``[metrics] textfile``), rewritten each run.

The node exporter reads ``*.prom`` files from its textfile directory; a half-written file would
be read as garbage, so the file is written to a temporary name and renamed (node_exporter
README, "Textfile Collector"). Only certman's own files are read here (state, DH state): no
network, no heavy import, so an idle ``certman run`` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from certman.config.schema import Config
from certman.lifecycle.state import Phase, State
from certman.lifecycle.statefile import CertDir

_HELP = {
    "certman_certificate_expiry_timestamp_seconds": "not_after of the served certificate",
    "certman_phase": "the rollover phase (1 for the current one)",
    "certman_last_success_timestamp_seconds": "when the last operation finished (0: never)",
    "certman_seconds_since_last_success": "now minus the last success (-1: never)",
    "certman_consecutive_failures": "failures recorded since the last success (history: 20)",
    "certman_backing_off": "1 while waiting out the back-off after a failure",
    "certman_next_key_age_seconds": "age of the staged next key",
    "certman_dhparams_age_seconds": "age of each DH parameter file certman manages",
    "certman_metrics_timestamp_seconds": "when this file was written",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {value:.17g}" if inner else f"{name} {value:.17g}"


def consecutive_failures(state: State) -> int:
    count = 0
    for entry in reversed(state.history):
        text = entry.partition(" ")[2]
        if not text.startswith(("error:", "rolled back:")):
            break
        count += 1
    return count


def _certificate(state: State, now: float) -> Iterable[tuple[str, dict[str, str], float]]:
    cert = {"certificate": state.name}
    for slot, info in state.certs.items():
        yield (
            "certman_certificate_expiry_timestamp_seconds",
            {**cert, "key_type": slot},
            info.not_after,
        )
    for phase in Phase:
        yield "certman_phase", {**cert, "phase": phase.value}, float(state.phase is phase)
    last = state.last_success
    yield "certman_last_success_timestamp_seconds", cert, last or 0.0
    yield "certman_seconds_since_last_success", cert, (now - last) if last else -1.0
    yield "certman_consecutive_failures", cert, float(consecutive_failures(state))
    backing = bool(state.last_error and state.retry_after and now < state.retry_after)
    yield "certman_backing_off", cert, float(backing)
    for slot, key in state.next.items():
        yield "certman_next_key_age_seconds", {**cert, "key_type": slot}, now - key.created


def render(cfg: Config, now: float) -> str:
    samples: list[tuple[str, dict[str, str], float]] = []
    for cert in cfg.certificates.values():
        state = CertDir.of(cfg.state_dir, cert.name).load(cert.name)
        samples += _certificate(state, now)
    if cfg.dhparams.files:
        from certman.dh.plan import load_state

        dh_state = load_state(cfg.state_dir)
        for path, record in sorted(dh_state.files.items()):
            samples.append(
                ("certman_dhparams_age_seconds", {"file": path}, now - record.generated_at)
            )
    samples.append(("certman_metrics_timestamp_seconds", {}, now))
    lines: list[str] = []
    for name, text in _HELP.items():
        mine = [s for s in samples if s[0] == name]
        if mine:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
            lines += [_sample(*s) for s in mine]
    return "\n".join(lines) + "\n"


def write_textfile(cfg: Config, now: float) -> Path | None:
    """Rewrite ``[metrics] textfile`` atomically; None when no textfile is configured."""
    from certman.fsutil import atomic_write

    path = cfg.metrics.textfile
    if path is None:
        return None
    atomic_write(path, render(cfg, now).encode(), mode=0o644)
    return path
