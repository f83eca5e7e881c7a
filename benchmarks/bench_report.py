"""``certman status`` and ``certman check`` with 10, 100 and 1,000 certificates on the testbed.

Each certificate gets its own TLSA name (``_25._tcp.sSIZEnNNNN.dane.test``, published in BIND
and DNSSEC-signed) holding the records of mx1's current and next keys, mx1's steady state, and
mx1's address as its probe address, so ``check`` does the full work per certificate (state,
Postfix's served keys, one validated TLSA lookup, one STARTTLS probe). ``check`` runs cold
(the resolver has not seen the names) then warm. The testbed's Postfix still allows TLS 1.0,
which the audit reports: the check says WARNING."""

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
    spkis = [k["spki_sha256"] for part in ("current", "next") for k in mx1_state[part].values()]
    names = [f"s{size}n{i:04d}" for i in range(size)]
    probe = ctx.bed.postfix["mx1"].address  # every endpoint is mx1, which serves that key
    sections = []
    for name in names:
        sections.append(
            f'[certificates.{name}]\ndomains = ["{name}.dane.test"]\nkey_type = "ecdsa-p256"\n\n'
            f"[certificates.{name}.dane]\nports = [25]\nttl = {TTL}\n"
            f'probe_address = "{probe}"\n\n'
            f'[certificates.{name}.postfix]\nlayout = "chain-files"\n'
            f'targets = ["sni:{name}.dane.test"]\n'
            f'directory = "{directory / "postfix-files"}"\n\n'
        )
        cert_dir = state_dir / "certs" / name
        cert_dir.mkdir(parents=True)
        cert_dir.chmod(0o700)
        (cert_dir / "state.json").write_text(json.dumps({**mx1_state, "name": name}))
    config = directory / "certman.toml"
    config.write_text(head + "".join(sections))
    for start in range(0, size, 100):  # one DNS message stays well under 64 KiB
        nsupdate(
            ctx.bed,
            *(
                f"update add _25._tcp.{name}.dane.test {TTL} TLSA 3 1 1 {spki}"
                for name in names[start : start + 100]
                for spki in spkis
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
    for stream in status:
        check_stream(stream, f"certman status ({size} certificates)")
    cold = _run(config, "check", env)
    warm = [_run(config, "check", env) for _ in range(rounds)]
    rows = [
        Row(SECTION, f"status, {size} certificates", median([s.seconds for s in status])),
        Row(
            SECTION,
            f"check, {size} certificates, cold resolver cache",
            cold.seconds,
            detail=f"exit {cold.returncode}: {_verdict(cold)}",
        ),
        Row(
            SECTION,
            f"check, {size} certificates, warm",
            median([s.seconds for s in warm]),
            detail=f"exit {warm[-1].returncode}: {_verdict(warm[-1])}",
        ),
    ]
    if size == 1000:
        for row, runs in ((rows[1], [cold]), (rows[2], warm)):
            answered = all(s.returncode in (0, 1, 2) for s in runs)  # 3: UNKNOWN, ran out of time
            row.goal = "< 2 s, every check answered"
            row.met = row.value is not None and row.value < 2 and answered
    return rows


def _verdict(stream: Stream) -> str:
    """The plugin's status line, without its perfdata."""
    first = stream.lines[0][1] if stream.lines else stream.stderr.strip()[:120]
    return first.split("|", 1)[0].strip()[:160]


def _run(config: Path, command: str, env: dict[str, str]) -> Stream:
    return run_stream([CERTMAN, "--config", str(config), command], env=env, timeout=300)
