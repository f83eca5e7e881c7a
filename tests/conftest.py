"""Shared fixtures. The ``testbed`` fixture brings up the real loopback servers once per session.

The pytest process enters the testbed's network namespace, so tests reach BIND, Unbound, Pebble,
Postfix, PowerDNS and moto at their 127.0.0.x addresses on standard ports. A server that does not
start fails the session: integration tests never skip.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from testbed import Testbed, enter_netns, start_testbed, stop_testbed


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    directory = tmp_path_factory.mktemp("testbed")
    bed = start_testbed(directory)
    try:
        enter_netns(bed.netns)
        yield bed
    finally:
        stop_testbed(directory)
