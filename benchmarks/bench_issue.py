"""Issuance next to certbot: one certificate from Pebble via DNS-01 through BIND.

``certman issue mx1`` (issuance, install, reload, live DANE verification; the progress lines
split it by step) against ``certbot certonly --authenticator dns-rfc2136
--dns-rfc2136-propagation-seconds 1`` (issuance only), alternating. Then 20 two-name
certificates issued each right after another change to the zone."""

from __future__ import annotations

from typing import Any

from common import Row, Stream, check_stream, deployed_venv, environment, median, run_stream
from hosts import bootstrap, nsupdate, write_host

SECTION = "issuance"
MARKS = (  # (label of the span starting at the line, a fragment of that line), in order
    ("start-up, lock, begin", None),
    ("ACME: imports, directory, account, new order", "obtain certificate"),
    ("ACME: authorization, TXT written", "acme: order "),
    ("ACME: zone and nameservers looked up", "TXT written"),
    ("ACME: until every nameserver serves the TXT", "dns-01: waiting until"),
    ("ACME: challenge answered, CA validates", "acme: waiting for the CA"),
    ("ACME: TXT removed, finalize, download, save", "TXT removed"),
    ("install + reload", "install certificate"),
    ("live DANE verification", "verify the live server"),
)


def run(ctx: Any) -> list[Row]:
    bot = ctx.certbot()
    config = ctx.host("mx1")
    rounds = 2 if ctx.quick else min(ctx.rounds, 6)
    certman = deployed_venv()[1]  # as installed: no editable-install import hook
    certman_argv = [certman, "--config", str(config), "issue", "mx1"]
    certbot_argv = bot.certonly("bench", "cb1.dane.test")
    certman_runs: list[Stream] = []
    certbot_runs: list[Stream] = []
    for index in range(rounds):
        pair = [("certman", certman_argv, None), ("certbot", certbot_argv, bot.env)]
        for name, argv, env in pair if index % 2 == 0 else pair[::-1]:
            stream = run_stream(argv, env=env or environment())
            check_stream(stream, name)
            (certman_runs if name == "certman" else certbot_runs).append(stream)
    rows = _rows(certman_runs, certbot_runs)
    rows += _after_zone_change(ctx, 3 if ctx.quick else 20)
    return rows


def _rows(certman_runs: list[Stream], certbot_runs: list[Stream]) -> list[Row]:
    total = median([s.seconds for s in certman_runs])
    issuance = median([s.at("install certificate") or s.seconds for s in certman_runs])
    certbot = median([s.seconds for s in certbot_runs])
    rows = [
        Row(
            SECTION, "certbot certonly (issuance only)", certbot, detail=f"{len(certbot_runs)} runs"
        ),
        Row(
            SECTION,
            "certman issue: issuance only (start to install)",
            issuance,
            detail=f"{issuance / certbot:.2f}x certbot",
        ),
        Row(
            SECTION,
            "certman issue: issuance + install + reload + verify",
            total,
            detail=f"{len(certman_runs)} runs",
            goal="< 0.15x certbot",
            met=total / certbot < 0.15,
        ),
        Row(
            SECTION,
            "ratio certman issue (all) / certbot certonly",
            total / certbot,
            unit="x",
            goal="< 0.15",
            met=total / certbot < 0.15,
        ),
    ]
    spans: dict[str, list[float]] = {}
    for stream in certman_runs:
        marks = [(0.0, MARKS[0][0])]
        marks += [(t, label) for label, frag in MARKS[1:] if frag and (t := stream.at(frag))]
        marks.sort()
        for (t, label), (t_next, _) in zip(marks, [*marks[1:], (stream.seconds, "")], strict=True):
            spans.setdefault(label, []).append(t_next - t)
    for label, _ in MARKS:
        if label in spans:
            rows.append(Row(SECTION, f"certman issue step: {label}", median(spans[label])))
    return rows


def _after_zone_change(ctx: Any, count: int) -> list[Row]:
    """Two-name certificates, each ordered right after another update of the zone (a NOTIFY
    and a transfer in flight: the challenge record must still be found on every server)."""
    bed = ctx.bed
    config = write_host(
        bed, ctx.work / "issue-mx2", "mx2", domains=["mx2.dane.test", "mail2.dane.test"]
    )
    bootstrap(config)
    ok, times, failures = 0, [], []
    for index in range(count):
        nsupdate(
            bed,
            "update delete bench-change.dane.test TXT",
            f'update add bench-change.dane.test 2 TXT "change {index}"',
        )
        argv = [deployed_venv()[1], "--config", str(config), "issue", "mx2"]
        stream = run_stream(argv, env=environment())
        times.append(stream.seconds)
        if stream.returncode == 0:
            ok += 1
        else:
            failures.append((stream.stderr.strip().splitlines() or ["?"])[-1])
    detail = f"median {median(times):.2f} s each" + (
        f"; first failure: {failures[0]}" if failures else ""
    )
    return [
        Row(
            SECTION,
            "two-name certificates right after a zone change",
            ok,
            unit=f"of {count}",
            detail=detail,
            goal=f"{count} of {count}",
            met=ok == count,
        )
    ]
