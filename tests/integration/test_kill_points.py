"""SIGKILL at every write point (issue 10): a DNS change, a file rename, ``postconf -e``, a
reload, a state save, before and after each. The points are enumerated by certman itself
(``CERTMAN_FAULT_LOG``), so a new write point is covered without editing this test.

For each point N of a whole rollover: put the host back where it was, kill certman at N
(``CERTMAN_FAULT_KILL_AT``), then let ``certman run`` finish, while a DANE prober checks the live
server through the caching validating resolver every 200 ms. No probe may fail.

Two bootstrap cases kill at every point of the first run (ADOPT, PUBLISH, CONFIRM) and check
the write-ahead facts the 2 x TTL wait is computed from: an RRset whose TTL is being lowered
(8 -> 3), and a name with no RRset at all (negative caching, RFC 2308).

Two more cases sweep a ``certman rollover --compromised`` and a dual RSA + ECDSA rollover
with a watch (served_watch.py) beside the prober that checks, on every sample, that no served
key's record is missing from a nameserver and that a new key is served no sooner than 2 x TTL +
margin after its record reached every nameserver. Those two kill at every other point (see
``test_a_kill_anywhere_in_a_compromised_or_dual_rollover_keeps_the_rules``).

Figures (points, probes, failures) are printed; run alone with ``make killsweep``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import OFFER_ECDSA_ONLY, OFFER_RSA_ONLY, Prober, write_config
from served_watch import Watch, tlsa_digests
from test_rollover_e2e import bootstrap, fresh_host, rfc2136, served_spki, state_of
from testbed import Testbed

from certman import keys
from certman.cli.main import main
from certman.config.load import load_config as load
from certman.config.schema import PostfixConfig
from certman.dane.probe import fetch_chain
from certman.dns.propagation import check_published, find_zone
from certman.dns.provider import RRset
from certman.lifecycle.state import Phase, State
from certman.model import KeyType
from certman.postfix.commands import Postfix

pytestmark = [pytest.mark.integration, pytest.mark.killsweep]
ROOT = Path(__file__).resolve().parents[2]
TLSA = "_25._tcp.mx1.dane.test"
SLOT = "ecdsa-p256"


@dataclass
class Runs:
    """Every certman process's output, to search for secrets afterwards."""

    outputs: list[str] = field(default_factory=list)

    def certman(
        self, config: Path, *args: str, log: Path | None = None, kill_at: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("CERTMAN_FAULT_LOG", None)
        env.pop("CERTMAN_FAULT_KILL_AT", None)
        if log is not None:
            env["CERTMAN_FAULT_LOG"] = str(log)
        if kill_at is not None:
            env["CERTMAN_FAULT_KILL_AT"] = str(kill_at)
        done = subprocess.run(
            [sys.executable, "-m", "certman", "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=env,
        )
        self.outputs.append(done.stdout + done.stderr)
        return done


@dataclass(frozen=True)
class Snapshot:
    """A host at rest: certman's state, the files Postfix reads, main.cf's setting, DNS."""

    saved: Path
    chain_files: str
    rrset: RRset | None


def postfix_of(bed: Testbed) -> Postfix:
    pf = bed.postfix["mx1"]
    return Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))


def snapshot(bed: Testbed, config: Path, where: Path) -> Snapshot:
    cfg = load(config)
    shutil.copytree(cfg.state_dir, where / "state", symlinks=True)
    files = config.parent / "postfix-files"
    if files.exists():
        shutil.copytree(files, where / "postfix-files", symlinks=True)
    chain = postfix_of(bed).get("smtpd_tls_chain_files")["smtpd_tls_chain_files"]
    return Snapshot(where, chain, rfc2136(bed).read(TLSA, "TLSA"))


def restore(bed: Testbed, config: Path, snap: Snapshot) -> None:
    cfg = load(config)
    shutil.rmtree(cfg.state_dir, ignore_errors=True)
    shutil.copytree(snap.saved / "state", cfg.state_dir, symlinks=True)
    files = config.parent / "postfix-files"
    shutil.rmtree(files, ignore_errors=True)
    if (snap.saved / "postfix-files").exists():
        shutil.copytree(snap.saved / "postfix-files", files, symlinks=True)
    postfix = postfix_of(bed)
    postfix.set({"smtpd_tls_chain_files": snap.chain_files})
    postfix.reload()
    provider = rfc2136(bed)
    if snap.rrset is None:
        provider.delete(TLSA, "TLSA")
    else:
        provider.replace(snap.rrset)
    # What the resolver cached in the previous round is not what this round starts from: flush
    # it once every nameserver serves the restored RRset (the secondary lags a little).
    zone = find_zone(TLSA, [bed.resolver])
    deadline = time.monotonic() + 30
    while not check_published(TLSA, "TLSA", snap.rrset, zone=zone).published:
        assert time.monotonic() < deadline, "the secondary never caught up with the restore"
        time.sleep(0.1)
    bed.unbound_control("flush_zone", "dane.test")
    bed.unbound_control("flush_negative")


def points(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def finish(
    runs: Runs, config: Path, command: tuple[str, ...], done: Callable[[State], bool]
) -> State:
    """What an operator does after a crash: `certman run` until done; the command again if the
    crash came before the operation was even recorded."""
    for _ in range(6):
        state = state_of(config)
        assert isinstance(state, State)
        idle = state.phase is Phase.STEADY and state.operation is None
        if idle and done(state):
            return state
        args = command if idle else ("run", "--max-wait", "120")
        result = runs.certman(config, *args)
        assert result.returncode == 0, result.stdout + result.stderr
    raise AssertionError(f"not finished: {state_of(config)}")


def prepare_rollover(bed: Testbed, config: Path) -> Callable[[State], bool]:
    """From a bootstrapped host at rest: `certman rollover` promotes the next key."""
    bootstrap(bed, config)
    time.sleep(7)  # 2 x TTL + 1: the bootstrap's records aged in every cache
    before = state_of(config)
    assert isinstance(before, State)
    nxt = before.next[SLOT].spki_sha256
    return lambda state: state.current[SLOT].spki_sha256 == nxt == served_spki(bed, "mx1")


def prepare_first_install(bed: Testbed, config: Path) -> Callable[[State], bool]:
    """From a bootstrap whose records aged: `certman run` issues and installs the first ACME
    certificate, which switches main.cf to certman's file (postconf -e) and reloads."""
    for _ in range(20):
        assert main(["--config", str(config), "run", "--max-wait", "0"]) == 0
        state = state_of(config)
        assert isinstance(state, State)
        if state.phase is Phase.AGE:
            break
        time.sleep(0.5)  # CONFIRM: the secondary has not caught up yet
    state = state_of(config)
    assert isinstance(state, State) and state.phase is Phase.AGE
    time.sleep(max(0.0, (state.tlsa.not_before or 0) - time.time()) + 1)
    current = state.current[SLOT].spki_sha256
    return lambda st: bool(st.certs) and current == served_spki(bed, "mx1")


SCENARIOS = {
    "rollover": (prepare_rollover, ("rollover", "mx1")),
    "first-install": (prepare_first_install, ("run", "--max-wait", "120")),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_kill_at_any_write_point_never_fails_a_dane_sender(
    testbed: Testbed, tmp_path: Path, scenario: str
) -> None:
    prepare, command = SCENARIOS[scenario]
    config = fresh_host(testbed, tmp_path / "host")
    done = prepare(testbed, config)
    snap = snapshot(testbed, config, tmp_path / "snap")
    runs = Runs()
    count = tmp_path / "count.log"
    assert runs.certman(config, *command, log=count).returncode == 0
    total = len(points(count))
    labels = [line.split(" ", 2)[2] for line in points(count)]
    kinds = {"DNS change", "reload", "state.json"} | (
        {"postconf -e"} if "install" in scenario else set()
    )
    assert all(any(k in x for x in labels) for k in kinds), labels
    samples = killed = 0
    for n in range(1, total + 1):
        restore(testbed, config, snap)
        prober = Prober(testbed, "mx1.dane.test", testbed.postfix["mx1"].address)
        with prober.running():
            time.sleep(0.5)
            began = time.time()
            log = tmp_path / f"kill-{n}.log"
            crashed = runs.certman(config, *command, log=log, kill_at=n)
            killed_at = time.time()
            if crashed.returncode == 0:  # fewer CONFIRM polls than the count run: ended first
                assert n > len(points(log)), (n, crashed.stdout, crashed.stderr)
            else:
                assert crashed.returncode == -signal.SIGKILL, (n, crashed.stdout, crashed.stderr)
                killed += 1
            finish(runs, config, command, done)
            time.sleep(1.0)
        label = labels[n - 1]
        timeline = [(round(t - began, 2), ok, out[:90]) for t, ok, out in prober.failures[:3]]
        assert prober.failures == [], (n, label, round(killed_at - began, 2), timeline)
        samples += len(prober.results)
    secret = testbed.bind.tsig.secret
    leaks = sum(secret in out for out in runs.outputs)
    print(
        f"\nkill sweep ({scenario}): {total} write points, {killed} kills, {samples} probes, "
        f"0 probe failures, {len(runs.outputs)} certman runs, {leaks} outputs with a secret"
    )
    assert leaks == 0


def _bootstrap_facts_after_kills(
    bed: Testbed, tmp_path: Path, existing_ttl: int | None
) -> tuple[int, list[State]]:
    """Kill at every point of a bootstrap's first run, finish it; the write-ahead facts."""
    config = fresh_host(bed, tmp_path / "host")
    if existing_ttl is not None:
        served = served_spki(bed, "mx1")
        rfc2136(bed).replace(RRset.of(TLSA, "TLSA", existing_ttl, {f"3 1 1 {served}"}))
    snap = snapshot_fresh(bed, config, tmp_path / "snap")
    runs = Runs()
    count = tmp_path / "count.log"
    assert runs.certman(config, "run", "--max-wait", "0", log=count).returncode == 0
    total = len(points(count))
    assert any("DNS change" in line for line in points(count))
    states: list[State] = []
    for n in range(1, total + 1):
        restore(bed, config, snap)
        crashed = runs.certman(
            config, "run", "--max-wait", "0", log=tmp_path / f"k{n}.log", kill_at=n
        )
        assert crashed.returncode == -signal.SIGKILL, (n, crashed.stdout, crashed.stderr)
        for _ in range(4):
            state = state_of(config)
            assert isinstance(state, State)
            if state.phase is Phase.AGE:
                break
            assert runs.certman(config, "run", "--max-wait", "0").returncode == 0
        final = state_of(config)
        assert isinstance(final, State) and final.phase is Phase.AGE, (n, final)
        states.append(final)
    assert not any(bed.bind.tsig.secret in out for out in runs.outputs)
    return total, states


def snapshot_fresh(bed: Testbed, config: Path, where: Path) -> Snapshot:
    """A host certman never ran on: no state, the testbed's own certificate, DNS as it is."""
    cfg = load(config)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    return snapshot(bed, config, where)


def test_a_kill_while_lowering_the_ttl_never_shortens_the_wait(
    testbed: Testbed, tmp_path: Path
) -> None:
    total, states = _bootstrap_facts_after_kills(testbed, tmp_path, existing_ttl=8)
    for state in states:
        tlsa = state.tlsa
        assert (tlsa.ttl_before, tlsa.ttl_after) == (8, 3), tlsa
        assert tlsa.confirmed_at is not None and tlsa.not_before is not None
        assert tlsa.not_before >= tlsa.confirmed_at + 2 * 8, tlsa
    print(f"\nkill sweep (TTL 8 -> 3 bootstrap): {total} write points, {len(states)} kills")


def test_a_kill_while_bootstrapping_an_empty_name_keeps_the_negative_ttl(
    testbed: Testbed, tmp_path: Path
) -> None:
    total, states = _bootstrap_facts_after_kills(testbed, tmp_path, existing_ttl=None)
    for state in states:
        tlsa = state.tlsa
        assert tlsa.name_was_empty and tlsa.negative_ttl == testbed.bind.negative_ttl, tlsa
    print(f"\nkill sweep (empty-name bootstrap): {total} write points, {len(states)} kills")


# -- a compromised-key rollover and a dual RSA + ECDSA rollover, with a watch on the rules -------


@dataclass(frozen=True)
class Case:
    """A rollover to sweep: how to set the host up, the command, when it is done."""

    config: Path
    command: tuple[str, ...]
    done: Callable[[State], bool]
    kinds: tuple[KeyType, ...]
    wait: float  # 2 x TTL + margin: the least time between a record on every server and its key
    old: frozenset[str]  # digests of the keys that must be gone from DNS when done


def compromised_case(bed: Testbed, directory: Path) -> Case:
    """`certman rollover --compromised` from a bootstrapped host at rest. TTL 1 s (the rules
    are the same; Unbound holds a 1 s answer up to 2 s, less than the 2 x 1 + 1 s wait), so a
    round with the whole publish, confirm and age costs seconds."""
    ttl, margin = 1, 1.0
    config = fresh_host(bed, directory, ttl=ttl)
    bootstrap(bed, config)
    time.sleep(2 * ttl + margin + 1)
    before = state_of(config)
    assert isinstance(before, State)
    old = frozenset({before.current[SLOT].spki_sha256, before.next[SLOT].spki_sha256})

    def done(state: State) -> bool:
        new = state.current[SLOT].spki_sha256
        return new not in old and new == served_spki(bed, "mx1")

    kinds = (KeyType.ECDSA_P256,)
    return Case(config, ("rollover", "mx1", "--compromised"), done, kinds, 2 * ttl + margin, old)


def dual_case(bed: Testbed, directory: Path) -> Case:
    """`certman rollover` of an RSA + ECDSA pair (``key_type = ["ecdsa-p256", "rsa2048"]``)."""
    ttl, margin = 3, 1.0
    fresh_host(bed, directory, ttl=ttl)
    kinds = (KeyType.ECDSA_P256, KeyType.RSA2048)
    config = write_config(bed, directory, ttl=ttl, key_types=[k.value for k in kinds])
    bootstrap(bed, config)
    time.sleep(2 * ttl + margin + 1)
    before = state_of(config)
    assert isinstance(before, State) and set(before.current) == {k.value for k in kinds}
    nxt = {k: v.spki_sha256 for k, v in before.next.items()}

    def done(state: State) -> bool:
        if {k: v.spki_sha256 for k, v in state.current.items()} != nxt:
            return False
        pf = bed.postfix["mx1"]
        return all(
            keys.cert_spki_sha256(fetch_chain(pf.address, 25, timeout=5, key_type=k)[0])
            == nxt[k.value]
            for k in kinds
        )

    old = frozenset(k.spki_sha256 for k in before.current.values())
    return Case(config, ("rollover", "mx1"), done, kinds, 2 * ttl + margin, old)


CASES = {"compromised": compromised_case, "dual": dual_case}
STRIDE = 2  # every other point: see the test's docstring


@dataclass
class Sweep:
    """The rounds of one case: each restores the host, kills certman at a point, finishes."""

    bed: Testbed
    case: Case
    snap: Snapshot
    logs: Path
    runs: Runs = field(default_factory=Runs)
    killed: set[str] = field(default_factory=set)  # _keys() of the points killed at
    rounds: int = 0
    probes: int = 0
    watched: int = 0

    def round(self, n: int) -> list[str]:
        """Kill at point ``n`` (if the run gets that far), finish, check; the run's points."""
        bed, case = self.bed, self.case
        self.rounds += 1
        restore(bed, case.config, self.snap)
        pf = bed.postfix["mx1"]
        offers = (OFFER_ECDSA_ONLY, OFFER_RSA_ONLY) if len(case.kinds) > 1 else ((),)
        probers = [Prober(bed, pf.host, pf.address, options=o) for o in offers]
        watch = Watch(bed, TLSA, pf.address, case.kinds)
        log = self.logs / f"round-{self.rounds}-kill-{n}.log"
        with ExitStack() as stack:
            for p in probers:
                stack.enter_context(p.running())
            stack.enter_context(watch.running())
            time.sleep(0.5)
            crashed = self.runs.certman(case.config, *case.command, log=log, kill_at=n)
            if crashed.returncode == 0:  # this run ended before point n
                assert n > len(points(log)), (n, crashed.stdout, crashed.stderr)
            else:
                assert crashed.returncode == -signal.SIGKILL, (n, crashed.stdout, crashed.stderr)
                self.killed.add(_keys(points(log))[-1])
            state = finish(self.runs, case.config, case.command, case.done)
            time.sleep(1.0)
        label = points(log)[-1] if crashed.returncode else "(no kill: the run ended first)"
        for p in probers:
            assert p.failures == [], (n, label, p.options, p.failures[:3])
            self.probes += len(p.results)
        assert watch.served_without_record() == [], (n, label, watch.served_without_record()[:3])
        assert watch.early_swaps(case.wait) == [], (n, label, case.wait)
        assert watch.newly_served(), (n, label, "the watch never saw the new key served")
        records = tlsa_digests(bed.bind.primary, TLSA)
        wanted = {k.spki_sha256 for k in (*state.current.values(), *state.next.values())}
        assert records == wanted and not records & case.old, (n, label, records, wanted)
        self.watched += len(watch.samples)
        return points(log) if crashed.returncode == 0 else []


@pytest.mark.parametrize("case_name", list(CASES))
def test_a_kill_anywhere_in_a_compromised_or_dual_rollover_keeps_the_rules(
    testbed: Testbed, tmp_path: Path, case_name: str
) -> None:
    """Kill at point 1, 3, 5, ... (each write's "before" point) until a run reaches its end
    unkilled, then at that run's last point; then at each "before" point of that whole run that
    no round killed at yet. After each kill, `certman run` until done.

    Every other point, not every point, to stay within the sweep's time budget (every point
    would add ~15 minutes on 2 cores instead of ~8): a kill "after write k" and one "before
    write k + 1" leave the same files, DNS records and state behind, so the "before" points
    cover every gap between two consecutive writes, and the last point the one after the last
    write. The number of points varies from run to run (CONFIRM polls, each a state save, with
    how fast the secondary catches up; an ACME order with or without a challenge), which shifts
    points by whole pairs: the end is found by running, and the last pass kills at the points
    the shifts made the first pass miss.

    Each round: the prober (posttls-finger through the caching validating resolver; one per key
    type for the dual case) must never fail, and the watch must see no served key without its
    record on both nameservers (so the compromised key's record stays until the new key is
    served) and no new key served sooner than 2 x TTL + margin after its record reached both.
    """
    case = CASES[case_name](testbed, tmp_path / "host")
    sweep = Sweep(testbed, case, snapshot(testbed, case.config, tmp_path / "snap"), tmp_path)
    began = time.monotonic()
    n = 1
    while not (whole := sweep.round(n)):
        n += STRIDE
    sweep.round(len(whole))  # after the last write
    first_pass = sweep.rounds
    keys_of_whole = _keys(whole)
    missed = [
        i
        for i, key in enumerate(keys_of_whole, 1)
        if key.startswith("before") and key not in sweep.killed
    ]
    for i in missed:
        sweep.round(i)
    befores = {k for k in keys_of_whole if k.startswith("before")}
    minutes = (time.monotonic() - began) / 60
    leaks = sum(testbed.bind.tsig.secret in out for out in sweep.runs.outputs)
    print(
        f"\nkill sweep ({case_name}): {len(whole)} write points in a whole run, "
        f"{len(sweep.killed)} distinct points killed at in {sweep.rounds} rounds "
        f"({first_pass} every other point, {len(missed)} missed by shifts), "
        f"{len(befores - sweep.killed)} gaps of the whole run not killed in, "
        f"{sweep.probes} probes, 0 probe failures, {sweep.watched} watch samples, "
        f"{len(sweep.runs.outputs)} certman runs, {leaks} outputs with a secret, "
        f"{minutes:.1f} min"
    )
    assert leaks == 0
    kinds = {"DNS change TLSA", "DNS change TXT", "reload", "state.json", "record.json"}
    assert all(any(k in x for x in sweep.killed) for k in kinds), sorted(sweep.killed)


def _keys(lines: list[str]) -> list[str]:
    """Each point as what it is and which of its kind it is in its run, without number,
    process, directories or key ids: "before rename state.json #3", "before DNS change TXT #1",
    "before reload #1"."""
    seen: dict[str, int] = {}
    keys = []
    for line in lines:
        words = line.split(" ")[2:]
        verb = [w for w in words if not w.startswith(("/", "_"))]
        paths = [w for w in words if w.startswith("/")]
        if "rename" in verb and paths:
            verb.append(re.sub(r"[0-9a-f]{12,}", "*", paths[0].rsplit("/", 1)[-1]))
        kind = " ".join(verb)
        seen[kind] = seen.get(kind, 0) + 1
        keys.append(f"{kind} #{seen[kind]}")
    return keys
