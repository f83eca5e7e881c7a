"""Fleet mode end to end: mx1 and mx2 as two hosts of one lineage coordinated through the
testbed's moto S3 (conditional writes), plus simulated hosts reporting through the same store.

Checks: one issuance per renewal for the whole fleet; a fleet rollover under posttls-finger DANE
probers on both Postfix instances with 0 failures, the old record retired only after every live
host verified; a SIGKILLed leader's work finished by the other host after the lease expired; two
hosts racing for the lease never both write the lineage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fleet_support import (
    AWS_ENV,
    CERT,
    SimulatedHost,
    fleet_configs,
    make_bucket,
    report_as,
    store_of,
)
from helpers import Prober
from schemas import validate
from test_rollover_shared import (
    SHARED_TLSA,
    RRsetWatch,
    all_running,
    digests,
    dns,
    served_spki,
    shared_name,
)
from testbed import Testbed

from certman.fleet import lease as leases
from certman.fleet.store import LostRace, Store
from certman.lifecycle.fleethost import load_lineage, read_reports, save_lineage
from certman.lifecycle.state import Operation, Phase, State

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
__all__ = ["shared_name"]  # the fixture, imported for use here


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def certman(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "certman", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def run_ok(config: Path, *args: str, timeout: float = 180) -> str:
    proc = certman(config, *args)
    output = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{output}"
    return output


@contextmanager
def cron(config: Path, interval: float = 1.0) -> Iterator[list[tuple[int, str]]]:
    """``certman run`` on a host every ``interval`` s, as its timer would (outputs collected)."""
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            proc = certman(config, "run", "--max-wait", "0")
            output = proc.communicate(timeout=120)[0]
            results.append((proc.returncode, output))
            stop.wait(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield results
    finally:
        stop.set()
        thread.join(150)


def lineage(config: Path) -> State:
    return load_lineage(store_of(config), CERT).state


def certs_in_store(store: Store) -> list[str]:
    return store.list("certs")


def bootstrap_fleet(configs: dict[str, Path]) -> None:
    """mx1 leads: fresh lineage keys, TLSA current + next, aged, one certificate; mx2 follows."""
    run_ok(configs["mx1"], "run", "--max-wait", "120")
    run_ok(configs["mx2"], "run")
    state = lineage(configs["mx1"])
    assert state.phase is Phase.STEADY, state
    assert state.certs


def test_fleet_issues_once_and_rolls_over_under_probers_with_no_failure(  # noqa: PLR0915
    testbed: Testbed, shared_name: None, aws: None, tmp_path: Path
) -> None:
    configs = fleet_configs(testbed, tmp_path, make_bucket(testbed), lease_seconds=20)
    store = store_of(configs["mx1"])
    bootstrap_fleet(configs)
    boot = lineage(configs["mx1"])
    assert len(certs_in_store(store)) == 1  # one issuance for the whole fleet
    spki = next(iter(boot.current.values())).spki_sha256
    for instance in ("mx1", "mx2"):
        assert served_spki(testbed.postfix[instance].address) == spki
    assert digests(dns(testbed).read(SHARED_TLSA, "TLSA")) == {
        k.spki_sha256 for k in (*boot.current.values(), *boot.next.values())
    }
    objects = [o for o in store.list("keys")]
    assert objects and all(o.endswith(".key.enc") for o in objects)
    for name in objects:
        blob = store.get(f"keys/{name}")
        assert blob is not None and b"PRIVATE KEY" not in blob.body
    state_blob = store.get("state.json")
    assert state_blob is not None and b"PRIVATE KEY" not in state_blob.body

    # -- idle: what a cron run costs each host --------------------------------------------------
    idle = {}
    for instance, config in configs.items():
        started = time.monotonic()
        output = run_ok(config, "run")
        idle[instance] = (time.monotonic() - started, output.strip().splitlines()[-1])
    assert all("[1 S3 requests]" in line for _, line in idle.values()), idle
    # with check_interval, an idle run trusts the lineage it read last: no S3, no boto3 import
    cached = fleet_configs(
        testbed, tmp_path, store.cfg.bucket, lease_seconds=20, check_interval=3600
    )
    quiet = {}
    for instance, config in cached.items():
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "certman", "--config", str(config), "run"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
        )
        quiet[instance] = time.monotonic() - started
        assert "boto3" not in proc.stderr and "botocore" not in proc.stderr
        assert "[0 S3 requests]" in proc.stdout, proc.stdout
    configs = fleet_configs(testbed, tmp_path, store.cfg.bucket, lease_seconds=20)

    # -- a renewal: issued once, served by both -------------------------------------------------
    with cron(configs["mx2"]) as mx2_runs:
        run_ok(configs["mx1"], "issue", CERT)
    renewed = lineage(configs["mx1"])
    assert renewed.phase is Phase.STEADY and renewed.current == boot.current
    assert len(certs_in_store(store)) == 2
    assert all(code == 0 for code, _ in mx2_runs), mx2_runs

    # -- a fleet rollover under the DANE probers, with a live simulated host and a silent one -
    report_as(store, "mx4", at=time.time() - 3600)  # a host gone silent an hour ago
    watch = RRsetWatch(testbed)
    probers = [
        Prober(testbed, testbed.postfix[i].host, testbed.postfix[i].address) for i in ("mx1", "mx2")
    ]
    mx3 = SimulatedHost(store, "mx3")
    with watch.running(), all_running(*probers), mx3.running(), cron(configs["mx2"]) as mx2_runs:
        started = time.monotonic()
        output = run_ok(configs["mx1"], "rollover", CERT, timeout=300)
        took = time.monotonic() - started
        time.sleep(7)  # the retired record leaves every resolver cache meanwhile
    after = lineage(configs["mx1"])
    assert after.phase is Phase.STEADY, after
    assert after.current == boot.next
    new_spki = next(iter(after.current.values())).spki_sha256
    for instance in ("mx1", "mx2"):
        assert served_spki(testbed.postfix[instance].address) == new_spki
    assert digests(dns(testbed).read(SHARED_TLSA, "TLSA")) == {
        k.spki_sha256 for k in (*after.current.values(), *after.next.values())
    }
    assert len(certs_in_store(store)) == 3
    assert watch.errors == [] and watch.lost() == []
    for prober in probers:
        assert len(prober.results) >= 10
        assert prober.failures == []
    assert mx3.errors == []
    assert all(code == 0 for code, _ in mx2_runs), mx2_runs
    assert any("hosts silent, not waited for: mx4" in h for h in after.history), after.history

    # retirement came after the last host's verification of the new key
    reports = {r.host: r for r in read_reports(store)}
    last_verified = max(reports[h].verified_at or 0 for h in ("mx1", "mx2", "mx3"))
    retired_at = after.tlsa.written_at
    assert retired_at is not None and retired_at > last_verified
    lag = retired_at - last_verified

    # -- status and check see every host; forget drops the silent one --------------------------
    status = json.loads(run_ok(configs["mx2"], "status", "--fleet", "--json"))
    validate("fleet-status", status)
    hosts = {h["host"]: h["status"] for h in status["fleet"][0]["hosts"]}
    assert hosts == {"mx1": "ok", "mx2": "ok", "mx3": "ok", "mx4": "silent"}
    text = run_ok(configs["mx2"], "status", "--fleet")
    assert "mx4" in text and "silent" in text and new_spki in text, text
    check = certman(configs["mx2"], "check")
    check_out = check.communicate(timeout=60)[0]
    assert check.returncode in (1, 2), check_out  # WARNING at least (CRITICAL may have others)
    assert "WARNING: fleet: mx host mx4: fleet host silent since" in check_out, check_out
    run_ok(configs["mx2"], "fleet", "forget", "mx4")
    status = json.loads(run_ok(configs["mx2"], "status", "--fleet", "--json"))
    assert {h["host"] for h in status["fleet"][0]["hosts"]} == {"mx1", "mx2", "mx3"}
    print(
        f"\nfleet: idle run {[(i, f'{t:.2f} s') for i, (t, _) in idle.items()]}; "
        f"idle run with check_interval {[(i, f'{t:.2f} s') for i, t in quiet.items()]}; "
        f"rollover {took:.1f} s; last verification -> retirement {lag:.2f} s; "
        f"probes {[len(p.results) for p in probers]}; mx2 cron runs {len(mx2_runs)}; "
        f"leader said: {output.strip().splitlines()[-1]}"
    )


def test_a_lagging_host_blocks_retirement_and_check_names_it(
    testbed: Testbed, shared_name: None, aws: None, tmp_path: Path
) -> None:
    from certman.config.load import load_config
    from certman.lifecycle import fleetrun
    from certman.lifecycle.context import Context

    configs = fleet_configs(testbed, tmp_path, make_bucket(testbed), lease_seconds=20)
    bootstrap_fleet(configs)
    before = lineage(configs["mx1"])
    old_spki = next(iter(before.current.values())).spki_sha256
    cfg = load_config(configs["mx1"])
    fleet = fleetrun.open_fleet(Context(cfg, time.time, time.sleep), cfg.certificate(CERT))
    outcome = fleetrun.run(fleet, request=Operation.ROLLOVER, max_wait=3)
    assert outcome.lineage.phase is Phase.VERIFY and outcome.waiting  # mx2 has not run
    assert old_spki in digests(dns(testbed).read(SHARED_TLSA, "TLSA"))
    check = certman(configs["mx1"], "check")
    out = check.communicate(timeout=60)[0]
    assert check.returncode in (1, 2), out
    assert "WARNING: fleet: mx host mx2: fleet host lags behind the fleet" in out, out
    status = json.loads(run_ok(configs["mx1"], "status", "--fleet", "--json"))
    hosts = {h["host"]: h["status"] for h in status["fleet"][0]["hosts"]}
    assert hosts == {"mx1": "ok", "mx2": "lagging"}

    with configs["mx2"].open("a") as text:  # mx2 only installs and reports, never leads
        text.write("lead = false\n")
    output = run_ok(configs["mx2"], "run")  # mx2 installs the new key, verifies, reports
    assert "left to a leading host" in output, output
    assert lineage(configs["mx1"]).phase is Phase.VERIFY
    run_ok(configs["mx1"], "run", "--max-wait", "30")  # the leader retires the old record
    after = lineage(configs["mx1"])
    assert after.phase is Phase.STEADY and after.current == before.next
    doc = store_of(configs["mx1"]).get("state.json")
    assert doc is not None and json.loads(doc.body)["holder"] == "mx1"
    assert old_spki not in digests(dns(testbed).read(SHARED_TLSA, "TLSA"))
    check = certman(configs["mx1"], "check")
    out = check.communicate(timeout=60)[0]
    assert "WARNING: fleet:" not in out, out


def test_killing_the_leader_mid_rollover_lets_the_other_host_finish_after_the_lease_expires(
    testbed: Testbed, shared_name: None, aws: None, tmp_path: Path
) -> None:
    lease_seconds = 6.0
    configs = fleet_configs(testbed, tmp_path, make_bucket(testbed), lease_seconds=lease_seconds)
    store = store_of(configs["mx1"])
    bootstrap_fleet(configs)
    before = lineage(configs["mx1"])
    leader = certman(configs["mx1"], "rollover", CERT)
    deadline = time.time() + 120
    while lineage(configs["mx1"]).phase is not Phase.VERIFY:  # waiting for mx2's report
        assert leader.poll() is None and time.time() < deadline, leader.communicate()[0]
        time.sleep(0.2)
    leader.send_signal(signal.SIGKILL)
    leader.communicate(timeout=30)
    killed_at = time.time()
    lease, _ = leases.read(store)
    assert lease is not None and lease.holder == "mx1"

    # Before the lease expires mx2 only installs and reports; the lineage is not its to write.
    output = run_ok(configs["mx2"], "run")
    assert "mx1 leads the fleet" in output, output
    assert lineage(configs["mx1"]).phase is Phase.VERIFY
    time.sleep(max(0.0, lease.expires_at - time.time()) + 0.5)
    # mx2 takes over and waits for every live host: mx1 too, whose timer runs again (it was
    # killed in the middle of its own install, which its next run resumes or rolls back).
    follower = certman(configs["mx2"], "run", "--max-wait", "90")
    deadline = time.time() + 60
    while (leases.read(store)[0] or lease).holder != "mx2":
        assert follower.poll() is None and time.time() < deadline, follower.communicate()[0]
        time.sleep(0.2)
    output = run_ok(configs["mx1"], "run")
    assert "mx2 leads the fleet" in output, output
    output = follower.communicate(timeout=120)[0]
    assert follower.returncode == 0, output
    took = time.time() - killed_at
    after = lineage(configs["mx2"])
    assert after.phase is Phase.STEADY, (after, output)
    assert after.current == before.next
    final_lease, _ = leases.read(store)
    assert final_lease is not None and final_lease.holder == "mx2"
    assert final_lease.term == lease.term + 1
    doc = store.get("state.json")
    assert doc is not None and json.loads(doc.body)["holder"] == "mx2"
    new_spki = next(iter(after.current.values())).spki_sha256
    for instance in ("mx1", "mx2"):
        assert served_spki(testbed.postfix[instance].address) == new_spki
    assert digests(dns(testbed).read(SHARED_TLSA, "TLSA")) == {
        k.spki_sha256 for k in (*after.current.values(), *after.next.values())
    }
    print(
        f"\nleader SIGKILLed in VERIFY; mx2 finished {took:.1f} s later (lease {lease_seconds} s)"
    )


class RacingClient:
    """An S3 client whose read of the lease waits until both hosts have read it: both see the
    same (absent or expired) lease, and both then try to write it."""

    def __init__(self, inner: Any, barrier: threading.Barrier, writes: list[str]) -> None:
        self.inner, self.barrier, self.writes = inner, barrier, writes
        self.armed = True  # only the first read of the lease waits for the other host

    def get_object(self, **kwargs: Any) -> Any:
        try:
            return self.inner.get_object(**kwargs)
        finally:
            if kwargs["Key"].endswith("lease.json") and self.armed:
                self.armed = False
                self.barrier.wait(10)

    def put_object(self, **kwargs: Any) -> Any:
        answer = self.inner.put_object(**kwargs)
        self.writes.append(kwargs["Key"].rsplit("/", 1)[-1])
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_two_hosts_racing_for_the_lease_never_both_write_the_state(
    testbed: Testbed, aws: None, tmp_path: Path
) -> None:
    import boto3

    configs = fleet_configs(testbed, tmp_path, make_bucket(testbed))
    base = store_of(configs["mx1"])
    barrier = threading.Barrier(2)
    writes: dict[str, list[str]] = {"mx1": [], "mx2": []}

    def store(host: str) -> Store:
        def client() -> Any:
            inner = boto3.client("s3", endpoint_url=testbed.moto_endpoint, region_name="us-east-1")
            return RacingClient(inner, barrier, writes[host])

        return Store(base.cfg, CERT, client)

    def contend(host: str, now: float, results: dict[str, Any]) -> None:
        s = store(host)
        got = leases.acquire(s, host, now, 30.0)
        results[host] = got
        if isinstance(got, leases.Held):  # the winner writes the lineage, as fleetrun does
            lineage_now = load_lineage(s, CERT)
            save_lineage(s, lineage_now, State(CERT), got.lease.term, host)

    for round_no, now in enumerate((1000.0, 2000.0, 3000.0)):  # absent, then expired, twice
        results: dict[str, Any] = {}
        threads = [threading.Thread(target=contend, args=(h, now, results)) for h in ("mx1", "mx2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        winners = [h for h, r in results.items() if isinstance(r, leases.Held)]
        assert len(winners) == 1, (round_no, results)
        loser = "mx2" if winners == ["mx1"] else "mx1"
        assert results[loser].holder == winners[0]
    total_state_writes = writes["mx1"].count("state.json") + writes["mx2"].count("state.json")
    assert total_state_writes == 3  # one per round, always by that round's winner
    for host in ("mx1", "mx2"):
        lease_writes = writes[host].count("lease.json")
        state_writes = writes[host].count("state.json")
        assert state_writes <= lease_writes  # never wrote the state without winning the lease

    # Fencing: a leader that lost the lease without noticing cannot overwrite the new term.
    stale = store_of(configs["mx1"])
    old = load_lineage(stale, CERT)
    fresh = store_of(configs["mx2"])
    taken = leases.acquire(fresh, "mx2", 9000.0, 30.0)
    assert isinstance(taken, leases.Held)
    newer = load_lineage(fresh, CERT)
    save_lineage(
        fresh, newer, newer.state.evolve(operation=Operation.RENEW), taken.lease.term, "mx2"
    )
    with pytest.raises(LostRace):
        save_lineage(stale, old, old.state, old.term, "mx1")
    final = load_lineage(fresh, CERT)
    assert final.holder == "mx2" and final.term == taken.lease.term


def test_a_paused_leader_that_lost_its_lease_stops_without_writing(
    testbed: Testbed, shared_name: None, aws: None, tmp_path: Path
) -> None:
    configs = fleet_configs(testbed, tmp_path, make_bucket(testbed), lease_seconds=6)
    store = store_of(configs["mx1"])
    bootstrap_fleet(configs)
    leader = certman(configs["mx1"], "rollover", CERT)
    deadline = time.time() + 120
    while not mx1_serves_the_staged_key(store):  # the leader waits for mx2 now
        assert leader.poll() is None and time.time() < deadline, leader.communicate()[0]
        time.sleep(0.2)
    leader.send_signal(signal.SIGSTOP)  # paused (a long GC, a frozen VM) while waiting for mx2
    try:
        lease, _ = leases.read(store)
        assert lease is not None and lease.holder == "mx1"
        time.sleep(max(0.0, lease.expires_at - time.time()) + 0.5)
        run_ok(configs["mx2"], "run", "--max-wait", "60")  # takes over, finishes (mx1 verified)
        done = store.get("state.json")
        assert done is not None and json.loads(done.body)["holder"] == "mx2"
    finally:
        leader.send_signal(signal.SIGCONT)
    output = leader.communicate(timeout=60)[0]
    assert leader.returncode == 75, output
    assert "lease" in output or "changed by another host" in output, output
    after = store.get("state.json")
    assert after is not None and after.body == done.body  # the old leader wrote nothing more
    assert lineage(configs["mx2"]).phase is Phase.STEADY


def mx1_serves_the_staged_key(store: Store) -> bool:
    from certman.lifecycle.fleethost import fleet_target, target_served

    state = load_lineage(store, CERT).state
    if state.phase is not Phase.VERIFY:
        return False
    target = target_served(*fleet_target(state))
    return any(r.host == "mx1" and r.served == target for r in read_reports(store))


def test_a_leader_killed_after_its_tlsa_write_resumes_with_the_facts_saved_ahead(
    testbed: Testbed, shared_name: None, aws: None, tmp_path: Path
) -> None:
    """Issue 10, defect 1 in fleet mode: the TTL goes from 3 s to 1 s and the leader dies right
    after writing the new TLSA RRset, before the lineage records it. The lineage already holds
    the facts about the RRset as it was (TTL 3), saved before the write; the resumed PUBLISH
    uses them, so the swap still waits 2 x 3 s, not 2 x 1 s."""
    configs = fleet_configs(testbed, tmp_path, make_bucket(testbed), lease_seconds=4)
    bootstrap_fleet(configs)
    for config in configs.values():
        text = config.read_text()
        assert "ttl = 3\n" in text
        config.write_text(text.replace("ttl = 3\n", "ttl = 1\n"))
    leader = subprocess.run(
        [sys.executable, "-m", "certman", "--config", str(configs["mx1"]), "rollover", CERT,
         "--compromised"],
        capture_output=True,
        check=False,
        text=True,
        timeout=180,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CERTMAN_FAULT_LOG": str(tmp_path / "points.log"),
            "CERTMAN_FAULT_KILL_AT": f"label:after DNS change {SHARED_TLSA} TLSA",
        },
    )  # fmt: skip
    assert leader.returncode == -signal.SIGKILL, leader.stdout + leader.stderr
    killed = lineage(configs["mx1"])
    assert killed.phase is Phase.PUBLISH, killed
    assert killed.publish_facts is not None and killed.publish_facts.ttl_before == 3
    rrset = dns(testbed).read(SHARED_TLSA, "TLSA")
    assert rrset is not None and rrset.ttl == 1  # the new RRset is out, its save is not
    time.sleep(4.5)  # the dead leader's lease expires
    deadline = time.time() + 60
    resumed = lineage(configs["mx1"])
    while resumed.phase is not Phase.AGE:  # the repeated PUBLISH, then CONFIRM
        assert time.time() < deadline, resumed
        run_ok(configs["mx1"], "run", "--max-wait", "0")
        resumed = lineage(configs["mx1"])
    tlsa = resumed.tlsa
    assert tlsa.ttl_before == 3 and tlsa.ttl_after == 1, tlsa
    assert tlsa.confirmed_at is not None and tlsa.not_before is not None
    assert tlsa.not_before - tlsa.confirmed_at >= 2 * 3, tlsa  # not 2 x 1
    after = resumed
    while after.phase is not Phase.STEADY:  # the swap, then mx2 installs and reports
        assert time.time() < deadline + 60, after
        run_ok(configs["mx1"], "run", "--max-wait", "10")
        run_ok(configs["mx2"], "run")
        after = lineage(configs["mx1"])
    assert after.current == resumed.next and after.last_error is None, after  # swapped
