"""Propagation detection: how long after the last nameserver serves a record certman notices.

lag.test's secondary gets no NOTIFY: it serves a change only when told to transfer. So: write a
TLSA record on the primary, let certman's ``wait_published`` poll with its default settings, tell
the secondary to transfer after a known delay, and watch the secondary every 5 ms from another
thread. The figure is certman's detection time minus the moment the secondary first served it."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from common import Row, median
from hosts import nsupdate

SECTION = "propagation detection"
DELAYS = (0.7, 1.3, 2.1, 3.4)  # seconds before the secondary transfers


def run(ctx: Any) -> list[Row]:
    from certman.config.schema import PropagationConfig

    defaults = PropagationConfig()
    delays = DELAYS[:2] if ctx.quick else DELAYS
    latencies, rounds = [], []
    for delay in delays:
        latency, polls = _once(ctx.bed, delay, defaults)
        latencies.append(latency)
        rounds.append(polls)
    worst = max(latencies)
    return [
        Row(
            SECTION,
            "detection after the last nameserver serves it (median)",
            median(latencies),
            detail=f"secondary delayed {', '.join(f'{d:g}' for d in delays)} s; latencies "
            + ", ".join(f"{x * 1000:.0f}" for x in latencies)
            + " ms; polls "
            + ", ".join(map(str, rounds)),
            extra={"latencies": latencies, "delays": list(delays), "polls": rounds},
        ),
        Row(
            SECTION,
            "detection after the last nameserver serves it (worst)",
            worst,
            goal="<= 0.2 s",
            met=worst <= 0.2,
        ),
    ]


def _once(bed: Any, delay: float, defaults: Any) -> tuple[float, int]:
    import dns.message
    import dns.query

    from certman.dns.propagation import find_zone, wait_published
    from certman.dns.provider import RRset

    name = f"_25._tcp.p{uuid.uuid4().hex[:8]}.lag.test"
    digest = uuid.uuid4().hex * 2
    zone = find_zone("lag.test", [bed.resolver])
    nsupdate(bed, f"update add {name} 2 TLSA 3 1 1 {digest}", zone="lag.test")
    expected = RRset(name, "TLSA", 2, frozenset({f"3 1 1 {digest}"}))
    served_at: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            reply = dns.query.udp(dns.message.make_query(name, "TLSA"), bed.bind.secondary, 1)
            if reply.answer:
                served_at.append(time.monotonic())
                return
            time.sleep(0.005)

    def transfer() -> None:
        time.sleep(delay)
        bed.retransfer("lag.test")

    polls = 0

    def counting_sleep(seconds: float) -> None:
        nonlocal polls
        polls += 1
        time.sleep(seconds)

    threads = [threading.Thread(target=watch), threading.Thread(target=transfer)]
    for thread in threads:
        thread.start()
    try:
        wait_published(
            name,
            "TLSA",
            expected,
            zone=zone,
            timeout=30,
            interval=defaults.interval,
            **_adaptive(defaults),
            sleep=counting_sleep,
            clock=time.monotonic,
        )
        detected = time.monotonic()
    finally:
        done.set()
        for thread in threads:
            thread.join(30)
    if not served_at:
        raise RuntimeError(f"{name}: the secondary never served the record")
    return detected - served_at[0], polls + 1


def _adaptive(defaults: Any) -> dict[str, float]:
    """The adaptive poll's first interval, where this certman has one."""
    first = getattr(defaults, "first_interval", None)
    return {} if first is None else {"first_interval": first}
