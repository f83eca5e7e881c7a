"""Renewal at scale: 100 certificates renewed by one ``certman run`` against Pebble.

The certificates (rNNN.dane.test, DNS-01 through BIND, no DANE, files in a private directory,
Postfix's parameters left alone) are first issued by one ``certman run``; then every state is
made due (``renew_after`` in the past) and a second ``certman run`` renews them all. certman has
no concurrency across certificates today: ``run`` renews them one after another."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from common import CERTMAN, Row, check_stream, environment, median, run_stream

SECTION = "renewal at scale"


def run(ctx: Any) -> list[Row]:
    count = 10 if ctx.quick else 100
    config = _host(ctx, count)
    argv = [CERTMAN, "--config", str(config), "run", "--max-wait", "120"]
    first = run_stream(argv, env=environment(), timeout=900)
    check_stream(first, f"certman run (issue {count})")
    _make_due(config.parent / "state")
    renewal = run_stream(argv, env=environment(), timeout=900)
    check_stream(renewal, f"certman run (renew {count})")
    per_cert = _per_certificate(renewal)
    if not per_cert:
        raise RuntimeError("no certificate's progress lines in the renewal run's output")
    slowest = max(per_cert.values())
    return [
        Row(
            SECTION,
            f"{count} certificates issued by one certman run",
            first.seconds,
            detail=f"{first.seconds / count:.2f} s each (adopt + order + install)",
        ),
        Row(
            SECTION,
            f"{count} certificates renewed by one certman run",
            renewal.seconds,
            detail=f"{renewal.seconds / count:.2f} s each, "
            f"median {median(list(per_cert.values())):.2f} s, "
            f"slowest {slowest:.2f} s; sequential (no concurrency setting yet)",
            extra={"per_certificate": per_cert},
        ),
    ]


def _host(ctx: Any, count: int) -> Path:
    """``count`` certificates on mx2's Postfix, without DANE and without touching main.cf."""
    from hosts import write_host

    directory = ctx.work / f"renew-{count}"
    template = write_host(ctx.bed, directory / "template", "mx2").read_text()
    head = template[: template.index("[certificates.")]
    head = head.replace(str(directory / "template" / "state"), str(directory / "state"))
    files = directory / "files"
    sections = "".join(
        f'[certificates.r{i:03d}]\ndomains = ["r{i:03d}.dane.test"]\n\n'
        f'[certificates.r{i:03d}.postfix]\ndirectory = "{files}"\nset_parameters = false\n'
        f'targets = ["sni:r{i:03d}.dane.test"]\n\n'
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
    """From each certificate's first progress line to the next certificate's."""
    starts: dict[str, float] = {}
    for t, raw in stream.lines:
        line = re.sub(r"^\d{4}-\d\d-\d\dT[\d:]+Z ", "", raw)  # the log's timestamp, off a tty
        name = line.split(":", 1)[0]
        if name.startswith("r") and name not in starts:
            starts[name] = t
    ordered = sorted(starts.items(), key=lambda item: item[1])
    ends = [t for _, t in ordered[1:]] + [stream.seconds]
    return {name: end - start for (name, start), end in zip(ordered, ends, strict=True)}
