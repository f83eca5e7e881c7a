"""Unbound: the validating resolver of the DANE clients, and a second one for Pebble."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import CA_RESOLVER, PDNS, PRIMARY, RESOLVER, SECONDARY, Context
from .probe import validated
from .proc import Started, wait_for


@dataclass(frozen=True)
class Instance:
    name: str
    interface: str
    control_port: int
    # Only the CA's resolver: Unbound held NXDOMAIN for a challenge name for over a second
    # after every nameserver had the record; the DANE clients' resolver caches as usual.
    ca: bool = False

    def conf(self, ctx: Context) -> Path:
        return ctx.path(self.name, "unbound.conf")

    def control(self, ctx: Context) -> list[str]:
        return ["unbound-control", "-c", str(self.conf(ctx))]


DANE = Instance("unbound", RESOLVER, 8953)
CA = Instance("unbound-ca", CA_RESOLVER, 8954, ca=True)


def stubs(pdns: bool) -> dict[str, tuple[str, ...]]:
    """Zone -> its authoritative servers' addresses."""
    zones = {
        "dane.test": (PRIMARY, SECONDARY),
        "lag.test": (PRIMARY, SECONDARY),
        "broken.test": (PRIMARY,),
        "plain.test": (PRIMARY,),  # unsigned: no trust anchor, answers without AD
    }
    if pdns:
        zones["pdns.test"] = (PDNS,)
    return zones


def start_unbound(
    ctx: Context, instance: Instance, anchors: Mapping[str, str], zones: Mapping[str, Sequence[str]]
) -> Started:
    conf = instance.conf(ctx)
    conf.write_text(_conf(instance, conf.parent, anchors, zones))
    started = ctx.spawn(instance.name, ["unbound", "-d", "-c", str(conf)])
    deadline = ctx.deadline()
    wait_for(
        started,
        "validated answers",
        lambda: all(
            validated(instance.interface, z) for z in zones if z in anchors and z != "broken.test"
        ),
        deadline,
    )
    return started


def unbound_json(ctx: Context, instance: Instance) -> dict[str, Any]:
    return {
        "address": instance.interface,
        "conf": str(instance.conf(ctx)),
        "control": instance.control(ctx),
    }


def _conf(
    instance: Instance,
    workdir: Path,
    anchors: Mapping[str, str],
    zones: Mapping[str, Sequence[str]],
) -> str:
    lines = [
        "server:",
        f"    interface: {instance.interface}",
        "    port: 53",
        "    do-ip6: no",
        "    do-not-query-localhost: no",
        "    access-control: 127.0.0.0/8 allow",
        '    chroot: ""',
        '    username: ""',
        f'    directory: "{workdir}"',
        f'    pidfile: "{workdir}/unbound.pid"',
        "    use-syslog: no",
        '    logfile: ""',
        "    verbosity: 1",
        "    val-log-level: 2",
        "    log-servfail: yes",
        # No root: nothing may be asked of the real root servers, no root anchor is fetched.
        "    trust-anchor-signaling: no",
        "    root-key-sentinel: no",
        '    local-zone: "." static',
        # test. is a built-in NXDOMAIN zone in Unbound (RFC 6761); the test zones are let through.
        '    local-zone: "test." nodefault',
        *(f'    local-zone: "{zone}." transparent' for zone in zones),
        *(f'    trust-anchor: "{anchors[zone]}"' for zone in zones if zone in anchors),
        *(_ca_cache() if instance.ca else []),
        "remote-control:",
        "    control-enable: yes",
        f"    control-interface: {instance.interface}",
        f"    control-port: {instance.control_port}",
        "    control-use-cert: no",
    ]
    for zone, servers in zones.items():
        lines += ["stub-zone:", f'    name: "{zone}"', *(f"    stub-addr: {s}" for s in servers)]
    return "\n".join(lines) + "\n"


def _ca_cache() -> list[str]:
    # Neither cached NXDOMAIN nor NSEC ranges (RFC 8198) may deny a challenge name later, and a
    # cached TXT of an earlier order must not answer for a new one: a CA asks afresh each time.
    return ["    cache-max-negative-ttl: 0", "    cache-max-ttl: 0", "    aggressive-nsec: no"]
