"""Renewal at scale: 100 certificates renewed by one ``certman run`` against Pebble, at
``[acme] concurrency`` 1 and 4.

The certificates (rNNN.dane.test, DNS-01 through BIND, no DANE, files in a private directory,
Postfix's parameters left alone) are first issued by one ``certman run`` (at the wider
concurrency, to save time); then every state is made due (``renew_after`` in the past) and a
``certman run`` renews them all, once at each concurrency. One Postfix reload per run covers
every switch."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from common import Row, check_stream, deployed_venv, environment, median, run_stream

SECTION = "renewal at scale"
CONCURRENCY = (1, 4)


def run(ctx: Any) -> list[Row]:
    count = 10 if ctx.quick else 100
    config = _host(ctx, count)
    certman = deployed_venv()[1]  # as installed: no editable-install import hook
    argv = [certman, "--config", str(config), "run", "--max-wait", "120"]
    _set_concurrency(config, max(CONCURRENCY))
    first = run_stream(argv, env=environment(), timeout=900)
    check_stream(first, f"certman run (issue {count})")
    rows = [
        Row(
            SECTION,
            f"{count} certificates issued by one certman run, concurrency {max(CONCURRENCY)}",
            first.seconds,
            detail=f"{first.seconds / count:.2f} s each (adopt + order + install)",
        )
    ]
    for width in CONCURRENCY:
        _set_concurrency(config, width)
        _make_due(config.parent / "state")
        renewal = run_stream(argv, env=environment(), timeout=900)
        check_stream(renewal, f"certman run (renew {count}, concurrency {width})")
        rows.append(_renewal_row(renewal, count, width))
    return rows


def _renewal_row(renewal: Any, count: int, width: int) -> Row:
    spans = _per_certificate(renewal)
    if len(spans) < count:
        raise RuntimeError(f"progress lines for {len(spans)} of {count} certificates")
    slowest = max(spans.values())
    return Row(
        SECTION,
        f"{count} certificates renewed by one certman run, concurrency {width}",
        renewal.seconds,
        detail=f"{renewal.seconds / count:.2f} s per certificate overall; each certificate's "
        f"order + install median {median(list(spans.values())):.2f} s, slowest {slowest:.2f} s; "
        f"one reload, then all verified by {renewal.seconds:.1f} s "
        f"({renewal.seconds - _reloaded_at(renewal):.1f} s after the reload)",
        extra={"per_certificate": spans, "concurrency": width},
    )


def _set_concurrency(config: Path, width: int) -> None:
    text = re.sub(r"\nconcurrency = \d+\n", "\n", config.read_text())
    config.write_text(text.replace("[acme]\n", f"[acme]\nconcurrency = {width}\n", 1))


def _host(ctx: Any, count: int) -> Path:
    """``count`` certificates on mx2's Postfix, without DANE, each its own SNI name in the
    table certman keeps (the verification after the install asks for that name on mx2)."""
    from hosts import write_host

    directory = ctx.work / f"renew-{count}"
    template = write_host(ctx.bed, directory / "template", "mx2").read_text()
    head = template[: template.index("[certificates.")]
    head = head.replace(str(directory / "template" / "state"), str(directory / "state"))
    files = directory / "files"
    address = ctx.bed.postfix["mx2"].address
    sections = "".join(
        f'[certificates.r{i:03d}]\ndomains = ["r{i:03d}.dane.test"]\n\n'
        f'[certificates.r{i:03d}.postfix]\ndirectory = "{files}"\n'
        f'targets = ["sni:r{i:03d}.dane.test"]\nprobe_address = "{address}"\n\n'
        for i in range(count)
    )
    config = directory / "certman.toml"
    config.write_text(head + sections)
    return config


def _make_due(state_dir: Path) -> None:
    for path in sorted((state_dir / "certs").glob("*/state.json")):
        state = json.loads(path.read_text())
        state["renew_after"] = time.time() - 1
        path.write_text(json.dumps(state))


def _per_certificate(stream: Any) -> dict[str, float]:
    """Each certificate's own work: from its first progress line to its last one before the
    run's one reload (order, DNS-01, install; lines of certificates advanced at the same time
    interleave). The verification of all of them after that reload is the rest of the run."""
    spans: dict[str, list[float]] = {}
    for t, raw in stream.lines:
        line = re.sub(r"^\d{4}-\d\d-\d\dT[\d:]+Z ", "", raw)  # the log's timestamp, off a tty
        if "reloaded once for this run" in line:
            break
        name = line.split(":", 1)[0]
        if re.fullmatch(r"r\d{3}", name):
            spans.setdefault(name, []).append(t)
    return {name: max(times) - min(times) for name, times in spans.items()}


def _reloaded_at(stream: Any) -> float:
    return stream.at("reloaded once for this run") or stream.seconds
