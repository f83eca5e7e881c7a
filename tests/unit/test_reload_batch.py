"""`certman run`'s one reload per Postfix instance (``ReloadBatch``), and one handshake per endpoint
in a verification attempt (``deploy._Fetched``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from certman.lifecycle.context import ReloadBatch


@dataclass
class FakePostfix:
    config_dir: str
    fail: bool = False
    reloads: list[str] = field(default_factory=list)

    def reload(self) -> None:
        self.reloads.append(self.config_dir)
        if self.fail:
            raise RuntimeError("postfix: fatal: simulated")


def test_one_reload_per_instance_covers_every_certificate_switched_there() -> None:
    batch = ReloadBatch()
    main, other = FakePostfix("/etc/postfix"), FakePostfix("/etc/postfix-out")
    for cert in ("mx", "submission", "smtps"):
        assert batch.defer(cert, main)  # type: ignore[arg-type]
    assert batch.defer("out", other)  # type: ignore[arg-type]
    assert not batch.covers("mx")
    results = batch.flush()
    assert main.reloads == ["/etc/postfix"] and other.reloads == ["/etc/postfix-out"]
    assert results == [
        ("/etc/postfix", None, ("mx", "smtps", "submission")),
        ("/etc/postfix-out", None, ("out",)),
    ]
    assert all(batch.covers(c) for c in ("mx", "submission", "smtps", "out"))
    assert not batch.defer("mx", main)  # type: ignore[arg-type]  # covered: verify, no reload
    assert batch.flush() == []  # nothing due any more


def test_a_failed_reload_is_the_error_of_every_certificate_that_waited_for_it() -> None:
    batch = ReloadBatch()
    bad, good = FakePostfix("/etc/postfix", fail=True), FakePostfix("/etc/postfix-out")
    batch.defer("mx", bad)  # type: ignore[arg-type]
    batch.defer("out", good)  # type: ignore[arg-type]
    results = {key: error for key, error, _ in batch.flush()}
    assert isinstance(results["/etc/postfix"], RuntimeError) and results["/etc/postfix-out"] is None
    with pytest.raises(RuntimeError, match="simulated"):
        batch.covers("mx")  # its VERIFY fails with the reload's error: rollback
    assert batch.covers("out")
    assert not batch.defer("mx", bad)  # type: ignore[arg-type]  # no second wait, no loop


def test_a_change_that_is_no_certificate_gets_the_same_single_reload() -> None:
    batch = ReloadBatch()
    main = FakePostfix("/etc/postfix")
    batch.due(main)  # type: ignore[arg-type]  # the DH files
    batch.defer("mx", main)  # type: ignore[arg-type]
    batch.flush()
    assert main.reloads == ["/etc/postfix"]


def test_verification_fetches_each_endpoint_once_per_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leaf check and the DANE check of one endpoint share one STARTTLS handshake."""
    from certman.lifecycle.steps.deploy import _Fetched

    calls: list[tuple[str, int, object]] = []

    def fetch_chain(address: str, port: int, **options: object) -> list[object]:
        calls.append((address, port, options.get("server_name")))
        return [object()]

    monkeypatch.setattr("certman.dane.probe.fetch_chain", fetch_chain)
    fetched = _Fetched()
    first = fetched.fetch("127.0.0.25", 25, timeout=10.0, key_type=None, server_name="mx1")
    again = fetched.fetch("127.0.0.25", 25, server_name="mx1", key_type=None, timeout=10.0)
    other = fetched.fetch("127.0.0.25", 25, timeout=10.0, key_type=None, server_name="mx2")
    assert first is again and other is not first
    assert calls == [("127.0.0.25", 25, "mx1"), ("127.0.0.25", 25, "mx2")]
    assert _Fetched().fetch("127.0.0.25", 25, server_name="mx1") is not first  # a new attempt
