"""Fleet-mode test pieces: a bucket on the testbed's moto, configs for mx1/mx2 as two hosts of
one lineage at the shared name, and simulated extra hosts that report through the store."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import in_background, write_config
from testbed import Testbed

from certman.config.load import load_config
from certman.fleet.reports import HostReport
from certman.fleet.store import Store
from certman.lifecycle.fleethost import fleet_target, load_lineage, target_served

CERT = "mx"
SHARED = "mx.dane.test"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def make_bucket(bed: Testbed) -> str:
    import boto3

    assert bed.moto_endpoint, "moto did not start"
    name = f"fleet-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=bed.moto_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return name


def fleet_configs(
    bed: Testbed,
    directory: Path,
    bucket: str,
    *,
    lease_seconds: float = 30,
    silent: float = 600,
    check_interval: float = 0,
) -> dict[str, Path]:
    """mx1 and mx2 as two hosts of lineage ``mx`` (TLSA at the shared name, TTL 3)."""
    key_file = directory / "fleet.key"
    if not key_file.exists():
        key_file.write_bytes(os.urandom(32))
        key_file.chmod(0o600)
    hosts = [bed.postfix[i].host for i in ("mx1", "mx2")]
    configs = {}
    for instance in ("mx1", "mx2"):
        path = write_config(
            bed,
            directory / instance,
            instance=instance,
            domains=[*hosts, SHARED],
            dane_hosts=[SHARED],
        )
        text = path.read_text().replace(f"[certificates.{instance}", f"[certificates.{CERT}")
        text += f"""
[fleet]
bucket = "{bucket}"
prefix = "fleet-test"
region = "us-east-1"
endpoint_url = "{bed.moto_endpoint}"
host = "{instance}"
lease_seconds = {lease_seconds}
key_file = "{key_file}"
silent_after = {silent}
check_interval = {check_interval}
"""
        path.write_text(text)
        configs[instance] = path
    return configs


def store_of(config: Path) -> Store:
    import boto3

    cfg = load_config(config)
    assert cfg.fleet is not None
    fleet = cfg.fleet

    def client() -> Any:
        return boto3.client("s3", endpoint_url=fleet.endpoint_url, region_name=fleet.region)

    return Store(fleet, CERT, client)


def report_as(
    store: Store, host: str, *, at: float | None = None, previous: HostReport | None = None
) -> HostReport:
    """A simulated host that serves whatever the fleet's target is now, verified (when it
    installed it: a report about the same certificate keeps its verification time)."""
    now = time.time() if at is None else at
    lineage = load_lineage(store, CERT).state
    served = target_served(*fleet_target(lineage))
    verified = now if served else None
    if previous is not None and previous.served == served:
        verified = previous.verified_at
    report = HostReport(host, now, served, verified_at=verified)
    store.put(f"hosts/{host}.json", report.to_bytes())
    return report


@dataclass
class SimulatedHost:
    """Follows the fleet's target every ``interval`` s, as a healthy host running cron would."""

    store: Store
    host: str
    interval: float = 0.5
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        last = None
        while not self._stop.is_set():
            try:
                last = report_as(self.store, self.host, previous=last)
            except Exception as exc:  # reported by the test
                self.errors.append(repr(exc))
            self._stop.wait(self.interval)

    @contextmanager
    def running(self) -> Iterator[SimulatedHost]:
        with in_background(self.run, self._stop):
            yield self
