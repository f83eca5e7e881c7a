"""Rollover overhead above the floor, on the testbed with a TLSA TTL of 2 s.

The floor is what no tool can skip: every authoritative nameserver serving each change (watched
from a thread, both servers every 10 ms), 2 x TTL + margin after a new key's record, and the
margin after the swap before the old record goes (smtpd processes started before the reload).
``certman rollover mx1`` with the next key already aged, then ``--compromised`` (the whole
publish, confirm, age, swap path); the progress lines give the steps."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from common import Row, Stream, check_stream, deployed_venv, environment, median, run_stream
from hosts import MARGIN, TTL

SECTION = "rollover overhead"
NAME = "_25._tcp.mx1.dane.test"
STEP_LINES = (
    ("publish TLSA", "publish TLSA records"),
    ("confirm + 2 x TTL + margin", "confirm records on every authoritative nameserver"),
    ("ACME order", "records aged on every resolver"),
    ("install + reload", "install certificate and reload Postfix"),
    ("live verification + retire margin", "verify the live server"),
    ("retire old record, publish next", "retire the old key's record"),
)


def run(ctx: Any) -> list[Row]:
    config = ctx.host("mx1")
    rounds = 1 if ctx.quick else 3
    rows = []
    for label, extra, goal in (
        ("next key already aged", [], 0.5),
        ("--compromised: publish, confirm, age, swap", ["--compromised"], 1.5),
    ):
        overheads, totals, floors, steps = [], [], [], []
        for _ in range(rounds):
            _wait_next_aged(config)
            with Watcher(ctx.bed) as watch:
                stream = run_stream(
                    [deployed_venv()[1], "--config", str(config), "rollover", "mx1", *extra],
                    env=environment(),
                )
            check_stream(stream, f"certman rollover {' '.join(extra)}")
            # the retire margin; a new key's record also 2 x TTL + margin before the swap
            waits = MARGIN + (2 * TTL + MARGIN if extra else 0.0)
            floor = waits + sum(watch.lags)
            totals.append(stream.seconds)
            floors.append(floor)
            overheads.append(stream.seconds - floor)
            steps.append(_steps(stream))
        overhead = median(overheads)
        breakdown = _median_steps(steps)
        rows.append(
            Row(
                SECTION,
                f"rollover, {label}: overhead above the floor",
                overhead,
                detail=f"wall {median(totals):.2f} s, floor {median(floors):.2f} s "
                f"(waits + nameserver lag); steps: {breakdown}",
                goal=f"< {goal:g} s",
                met=overhead < goal,
                extra={"totals": totals, "floors": floors, "steps": steps},
            )
        )
    return rows


def _steps(stream: Stream) -> dict[str, float]:
    """Seconds from each step's progress line to the next line of another step."""
    marks = []
    for label, fragment in STEP_LINES:
        for t, line in stream.lines:
            if fragment in line:
                marks.append((t, label))
                break
    marks.sort()
    bounds = [*marks, (stream.seconds, "end")]
    result = {"start-up to first step": marks[0][0] if marks else stream.seconds}
    for (t, label), (t_next, _) in itertools.pairwise(bounds):
        result[label] = t_next - t
    return result


def _median_steps(steps: list[dict[str, float]]) -> str:
    labels = list(steps[0]) if steps else []
    return ", ".join(
        f"{label} {median([s[label] for s in steps if label in s]):.2f} s" for label in labels
    )


def _wait_next_aged(config: Any) -> None:
    """Until the next key's record has aged (a previous rollover just published it)."""
    import json

    path = config.parent / "state" / "certs" / "mx1" / "state.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        ready = json.loads(path.read_text()).get("next_ready_at")
        if ready is not None and ready < time.time():
            return
        time.sleep(0.1)
    raise RuntimeError("the next key never aged")


class Watcher:
    """Both BIND servers polled every 10 ms: for each new TLSA RRset the primary serves, how
    long until the secondary serves it too (the propagation part of the floor)."""

    def __init__(self, bed: Any) -> None:
        self.servers = (bed.bind.primary, bed.bind.secondary)
        self.first_seen: list[dict[frozenset[str], float]] = [{}, {}]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._initial = [self._ask(s) for s in self.servers]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # the last change may still be on its way to the secondary
        self._stop.set()
        self._thread.join(10)

    def _ask(self, server: str) -> frozenset[str]:
        import dns.message
        import dns.query

        reply = dns.query.udp(dns.message.make_query(NAME, "TLSA"), server, timeout=1)
        return frozenset(str(r) for rrset in reply.answer for r in rrset)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for index, server in enumerate(self.servers):
                try:
                    value = self._ask(server)
                except Exception:  # a lost UDP packet: ask again next round
                    continue
                self.first_seen[index].setdefault(value, now)
            time.sleep(0.01)

    @property
    def lags(self) -> list[float]:
        """Per RRset the primary served during the run: secondary's first time - primary's."""
        primary, secondary = self.first_seen
        return [
            max(0.0, secondary[value] - seen)
            for value, seen in primary.items()
            if value in secondary and value != self._initial[0]
        ]
