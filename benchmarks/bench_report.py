"""``certman status`` and ``certman check`` with 10, 100 and 1,000 certificates on the testbed.

Each certificate gets its own TLSA name (``_25._tcp.bNNNN.dane.test``, published in BIND and
DNSSEC-signed) holding the key mx1 serves, and a steady state naming that key as current, so
``check`` does the full work per certificate (Postfix's served keys, one validated TLSA lookup)
and finds nothing wrong. ``check`` runs cold (the resolver has not seen the names) then warm."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from common import CERTMAN, Row, Stream, check_stream, environment, median, run_stream
from hosts import nsupdate

SECTION = "status and check at scale"
SIZES = (10, 100, 1000)
TTL = 300  # long enough that the warm runs find every answer in the resolver's cache


def run(ctx: Any) -> list[Row]:
    base = ctx.host("mx1")
    sizes = (10, 100) if ctx.quick else SIZES
    rows = []
    for size in sizes:
        config = _host(ctx, base, size)
        rows += _measure(config, size, 2 if ctx.quick else 5)
    return rows


def _host(ctx: Any, base: Path, size: int) -> Path:
    """``size`` certificates bNNNN (a prefix per size), records published, state steady."""
    directory = ctx.work / f"report-{size}"
    state_dir = directory / "state"
    text = base.read_text()
    head = text[: text.index("[certificates.")]
    head = head.replace(str(base.parent / "state"), str(state_dir))
    mx1_state = json.loads((base.parent / "state" / "certs" / "mx1" / "state.json").read_text())
    spki = next(iter(mx1_state["current"].values()))["spki_sha256"]
    names = [f"s{size}n{i:04d}" for i in range(size)]
    sections = []
    for name in names:
        sections.append(
            f'[certificates.{name}]\ndomains = ["{name}.dane.test"]\nkey_type = "ecdsa-p256"\n\n'
            f"[certificates.{name}.dane]\nports = [25]\nttl = {TTL}\n\n"
            f'[certificates.{name}.postfix]\nlayout = "chain-files"\n'
            f'directory = "{directory / "postfix-files"}"\n\n'
        )
        cert_dir = state_dir / "certs" / name
        cert_dir.mkdir(parents=True)
        cert_dir.chmod(0o700)
        (cert_dir / "state.json").write_text(json.dumps({**mx1_state, "name": name}))
    config = directory / "certman.toml"
    config.write_text(head + "".join(sections))
    for start in range(0, size, 200):  # one DNS message stays well under 64 KiB
        nsupdate(
            ctx.bed,
            *(
                f"update add _25._tcp.{name}.dane.test {TTL} TLSA 3 1 1 {spki}"
                for name in names[start : start + 200]
            ),
        )
    _wait_signed_everywhere(ctx.bed, names[-1])
    return config


def _wait_signed_everywhere(bed: Any, last: str) -> None:
    """Until both nameservers serve the last record (BIND signs and transfers in the
    background; a check run before that would measure the secondary's lag)."""
    import dns.message
    import dns.query

    deadline = time.monotonic() + 60
    name = f"_25._tcp.{last}.dane.test"
    for server in (bed.bind.primary, bed.bind.secondary):
        while True:
            query = dns.message.make_query(name, "TLSA", want_dnssec=True)
            reply = dns.query.udp(query, server, timeout=2)
            if any(r.rdtype == 46 for r in reply.answer):  # the RRSIG: signed
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server}: {name} not served signed after 60 s")
            time.sleep(0.1)


def _measure(config: Path, size: int, rounds: int) -> list[Row]:
    env = environment()
    status = [_run(config, "status", env) for _ in range(rounds)]
    cold = _run(config, "check", env)
    warm = [_run(config, "check", env) for _ in range(rounds)]
    for stream in [*status, cold, *warm]:
        check_stream(stream, f"certman ({size} certificates)")
    verdict = cold.lines[0][1] if cold.lines else "?"
    rows = [
        Row(SECTION, f"status, {size} certificates", median([s.seconds for s in status])),
        Row(SECTION, f"check, {size} certificates, cold resolver cache", cold.seconds,
            detail=f"says: {verdict}"),
        Row(SECTION, f"check, {size} certificates, warm", median([s.seconds for s in warm])),
    ]
    if size == 1000:
        rows[1].goal, rows[1].met = "< 2 s", cold.seconds < 2
        rows[2].goal, rows[2].met = "< 2 s", rows[2].value is not None and rows[2].value < 2
    return rows


def _run(config: Path, command: str, env: dict[str, str]) -> Stream:
    return run_stream([CERTMAN, "--config", str(config), command], env=env, timeout=300)
