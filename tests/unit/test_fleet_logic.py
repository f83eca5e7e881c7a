"""Fleet mode, the pure parts: lease decisions, key encryption, who may retire, what hosts serve."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certman.config.schema import FleetConfig
from certman.errors import CertmanError, ConfigError
from certman.fleet import crypto
from certman.fleet.lease import Lease, claimed, may_take
from certman.fleet.reports import HostReport, Served, heartbeat_due, readiness
from certman.fleet.store import LostRace, Store
from certman.lifecycle.fleethost import fleet_target, serving
from certman.lifecycle.state import Operation, Phase, State
from certman.model import CertInfo, KeyInfo, KeyType

# -- the lease ------------------------------------------------------------------------------------


def test_a_lease_held_by_another_host_cannot_be_taken_before_it_expires() -> None:
    held = Lease("mx1", 3, expires_at=100.0)
    assert not may_take(held, "mx2", 99.9)
    assert may_take(held, "mx2", 100.0)
    assert may_take(held, "mx1", 50.0)
    assert may_take(None, "mx2", 0.0)


def test_a_lease_changing_hands_gets_a_new_term_and_an_extension_keeps_it() -> None:
    assert claimed(None, "mx1", 10.0, 30.0) == Lease("mx1", 1, 40.0)
    assert claimed(Lease("mx1", 4, 20.0), "mx1", 15.0, 30.0) == Lease("mx1", 4, 45.0)
    assert claimed(Lease("mx1", 4, 20.0), "mx2", 25.0, 30.0) == Lease("mx2", 5, 55.0)


@given(
    holder=st.sampled_from(["mx1", "mx2", "mx3"]),
    me=st.sampled_from(["mx1", "mx2", "mx3"]),
    term=st.integers(0, 1000),
    expires=st.floats(0, 1e6),
    now=st.floats(0, 1e6),
)
def test_a_taken_lease_always_names_us_and_never_lowers_the_term(
    holder: str, me: str, term: int, expires: float, now: float
) -> None:
    before = Lease(holder, term, expires)
    if not may_take(before, me, now):
        assert holder != me and now < expires
        return
    after = claimed(before, me, now, 60.0)
    assert after.holder == me and after.expires_at == now + 60.0
    assert after.term == (term if holder == me else term + 1)


def test_lease_json_round_trips_and_a_corrupt_one_is_named() -> None:
    lease = Lease("mx1", 7, 1234.5)
    assert Lease.from_bytes(lease.to_bytes(), "x") == lease
    with pytest.raises(CertmanError, match=r"s3://b/lease.json: corrupt lease"):
        Lease.from_bytes(b"{}", "s3://b/lease.json")


# -- keys at rest ---------------------------------------------------------------------------------


def test_encryption_round_trips_and_never_contains_the_plaintext() -> None:
    key = bytes(range(32))
    pem = b"-----BEGIN PRIVATE KEY-----\nsecret material\n-----END PRIVATE KEY-----\n"
    blob = crypto.encrypt(key, pem, "certman/mx/keys/a.key.enc")
    assert b"secret material" not in blob and b"PRIVATE KEY" not in blob
    assert crypto.decrypt(key, blob, "certman/mx/keys/a.key.enc") == pem
    assert crypto.encrypt(key, pem, "n") != crypto.encrypt(key, pem, "n")  # fresh nonce


def test_a_blob_under_another_name_or_fleet_key_or_altered_does_not_decrypt() -> None:
    key = bytes(range(32))
    blob = crypto.encrypt(key, b"pem", "certman/mx/keys/a.key.enc")
    with pytest.raises(CertmanError, match="cannot decrypt"):
        crypto.decrypt(key, blob, "certman/mx/keys/b.key.enc")
    with pytest.raises(CertmanError, match="cannot decrypt"):
        crypto.decrypt(bytes(32), blob, "certman/mx/keys/a.key.enc")
    altered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CertmanError, match="cannot decrypt"):
        crypto.decrypt(key, altered, "certman/mx/keys/a.key.enc")
    with pytest.raises(CertmanError, match="not an encrypted fleet key"):
        crypto.decrypt(key, b"-----BEGIN", "x")


def test_fleet_key_file_reads_raw_hex_and_base64_and_names_a_bad_file(tmp_path: Path) -> None:
    key = bytes(range(32))
    for name, data in (
        ("raw", key),
        ("hex", key.hex().encode() + b"\n"),
        ("b64", base64.b64encode(key) + b"\n"),
    ):
        (tmp_path / name).write_bytes(data)
        assert crypto.load_fleet_key(tmp_path / name) == key
    (tmp_path / "short").write_text("abcd\n")
    with pytest.raises(ConfigError, match=r"short: expected a 256-bit fleet key"):
        crypto.load_fleet_key(tmp_path / "short")
    with pytest.raises(ConfigError, match=r"missing: cannot read the fleet key file"):
        crypto.load_fleet_key(tmp_path / "missing")


# -- who may retire -------------------------------------------------------------------------------

NEW = {"ecdsa-p256": Served("b" * 64, "2a")}
OLD = {"ecdsa-p256": Served("a" * 64, "1a")}


def report(host: str, served: dict[str, Served], at: float = 1000.0, **kw: object) -> HostReport:
    return HostReport(host, at, served, verified_at=kw.pop("verified_at", at), **kw)  # type: ignore[arg-type]


def test_retirement_waits_for_every_live_host_to_serve_the_new_key_verified() -> None:
    reports = [report("mx1", NEW), report("mx2", OLD)]
    state = readiness(reports, NEW, 1000.0, silent_after=600)
    assert not state.ready and state.lagging == ("mx2",)
    reports[1] = report("mx2", NEW)
    assert readiness(reports, NEW, 1000.0, silent_after=600).ready


def test_an_unverified_or_failing_host_still_blocks_retirement() -> None:
    unverified = report("mx2", NEW, verified_at=None)
    failing = report("mx3", NEW, last_error="verification failed")
    for other in (unverified, failing):
        assert not readiness([report("mx1", NEW), other], NEW, 1000.0, 600).ready


def test_a_silent_host_is_named_and_does_not_block_forever() -> None:
    reports = [report("mx1", NEW), report("mx9", OLD, at=100.0)]
    state = readiness(reports, NEW, 1000.0, silent_after=600)
    assert state.ready and state.silent == ("mx9",) and state.lagging == ()


def test_no_live_host_at_all_never_counts_as_ready() -> None:
    assert not readiness([], NEW, 1000.0, 600).ready
    assert not readiness([report("mx1", NEW, at=0.0)], NEW, 1000.0, 600).ready


@given(
    hosts=st.lists(
        st.tuples(st.sampled_from(["old", "new"]), st.floats(0, 2000), st.booleans()),
        max_size=8,
    )
)
def test_ready_means_every_live_host_verified_the_new_key(
    hosts: list[tuple[str, float, bool]],
) -> None:
    reports = [
        report(f"h{i}", NEW if which == "new" else OLD, at, verified_at=at if ok else None)
        for i, (which, at, ok) in enumerate(hosts)
    ]
    state = readiness(reports, NEW, 2000.0, silent_after=600)
    live = [r for r in reports if 2000.0 - r.reported_at <= 600]
    if state.ready:
        assert live and all(r.served == NEW and r.verified_at is not None for r in live)


def test_a_heartbeat_is_due_at_a_third_of_the_silence_limit() -> None:
    assert heartbeat_due(None, 0.0, 300)
    assert not heartbeat_due(report("mx1", NEW, at=1000.0), 1099.0, 300)
    assert heartbeat_due(report("mx1", NEW, at=1000.0), 1100.0, 300)


def test_a_report_round_trips_and_same_facts_ignores_the_time() -> None:
    one = report("mx1", NEW, at=1.0, last_error=None)
    assert HostReport.from_bytes(one.to_bytes(), "x") == one
    later = HostReport("mx1", 99.0, NEW, verified_at=1.0)
    assert later.same_facts(one) and not later.same_facts(None)


# -- what the fleet serves ------------------------------------------------------------------------


def key(kind: str, digit: str) -> KeyInfo:
    return KeyInfo(f"ecdsa-p256-{digit * 16}", KeyType.ECDSA_P256, digit * 64, 0.0)


def cert(key_info: KeyInfo, serial: str) -> CertInfo:
    return CertInfo(key_info.id, serial, 0.0, 1e10, None, f"/x/{serial}.pem")


def test_hosts_serve_the_current_key_until_the_lineage_hands_out_the_staged_one() -> None:
    cur, nxt = key("e", "a"), key("e", "b")
    slot = "ecdsa-p256"
    base = State(
        "mx",
        phase=Phase.ISSUE,
        operation=Operation.ROLLOVER,
        current={slot: cur},
        next={slot: nxt},
        certs={slot: cert(cur, "1")},
        staged={slot: cert(nxt, "2")},
    )
    assert fleet_target(base) == ({slot: cur}, {slot: cert(cur, "1")})
    for phase in (Phase.INSTALL, Phase.VERIFY):
        assert fleet_target(base.evolve(phase=phase)) == ({slot: nxt}, {slot: cert(nxt, "2")})
    assert fleet_target(State("mx")) == ({}, {})


def test_a_host_mid_install_reports_serving_nothing_new() -> None:
    cur = key("e", "a")
    local = State("mx", phase=Phase.VERIFY, current={"ecdsa-p256": cur})
    assert serving(local) == {}
    steady = local.evolve(phase=Phase.STEADY, certs={"ecdsa-p256": cert(cur, "1")})
    assert serving(steady) == {"ecdsa-p256": Served("a" * 64, "1")}


# -- the store: S3 answers mapped to what the fleet acts on ---------------------------------------


class FakeS3:
    """Answers like S3 does (botocore ClientError with the service's error code)."""

    def __init__(self, code: str, status: int) -> None:
        self.code, self.status, self.calls = code, status, 0

    def put_object(self, **kwargs: object) -> dict[str, str]:
        from botocore.exceptions import ClientError

        self.calls += 1
        response = {
            "Error": {"Code": self.code, "Message": "the message"},
            "ResponseMetadata": {"HTTPStatusCode": self.status},
        }
        raise ClientError(response, "PutObject")  # type: ignore[arg-type]

    get_object = put_object


def fleet_cfg() -> FleetConfig:
    return FleetConfig("bkt", "pre", None, None, "mx1", 30.0, Path("/k"), 600.0)


def test_store_maps_a_failed_precondition_to_a_lost_race_naming_the_object() -> None:
    fake = FakeS3("PreconditionFailed", 412)
    store = Store(fleet_cfg(), "mx", lambda: fake)
    with pytest.raises(LostRace, match=r"^s3://bkt/pre/mx/lease.json: changed by another host"):
        store.replace("lease.json", b"{}", '"etag"')
    assert store.requests == 1 and LostRace.exit_code == 75


def test_store_reads_a_missing_object_as_none_and_reports_other_errors_in_one_line() -> None:
    assert Store(fleet_cfg(), "mx", lambda: FakeS3("NoSuchKey", 404)).get("state.json") is None
    store = Store(fleet_cfg(), "mx", lambda: FakeS3("AccessDenied", 403))
    with pytest.raises(CertmanError) as error:
        store.get("state.json")
    assert str(error.value) == "s3://bkt/pre/mx/state.json: get_object failed: the message"


def test_store_builds_no_client_until_the_first_request() -> None:
    built: list[int] = []

    def factory() -> FakeS3:
        built.append(1)
        return FakeS3("NoSuchKey", 404)

    store = Store(fleet_cfg(), "mx", factory)
    assert built == [] and store.where("x") == "s3://bkt/pre/mx/x"
    store.get("x")
    store.get("y")
    assert built == [1] and store.requests == 2


def test_importing_fleet_mode_imports_neither_boto3_nor_cryptography() -> None:
    import subprocess
    import sys

    code = (
        "import sys, certman.cli.fleet, certman.lifecycle.fleetrun;"
        "heavy = [m for m in ('boto3', 'botocore', 'cryptography') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
