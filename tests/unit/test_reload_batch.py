"""`certman run`'s one reload per Postfix instance (``ReloadBatch``): who is covered by it."""

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
