"""Integration tests share the testbed's two Postfix instances: each test gets them back as the
testbed made them (main.cf restored and Postfix reloaded only when a test changed it)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from testbed import Testbed


@pytest.fixture(scope="session")
def pristine_main_cf(testbed: Testbed) -> dict[str, tuple[Path, bytes]]:
    return {
        name: (pf.config_dir / "main.cf", (pf.config_dir / "main.cf").read_bytes())
        for name, pf in testbed.postfix.items()
    }


@pytest.fixture(autouse=True)
def restore_postfix(request: pytest.FixtureRequest) -> Iterator[None]:
    if "testbed" not in request.fixturenames:
        yield
        return
    saved: dict[str, tuple[Path, bytes]] = request.getfixturevalue("pristine_main_cf")
    bed: Testbed = request.getfixturevalue("testbed")
    yield
    for name, (path, content) in saved.items():
        if path.read_bytes() == content:
            continue
        path.write_bytes(content)
        config_dir = str(bed.postfix[name].config_dir)
        subprocess.run(["postfix", "-c", config_dir, "reload"], check=True, capture_output=True)
