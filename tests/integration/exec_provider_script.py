"""A DNS "provider" command for the exec provider's tests: RRsets kept in a JSON file.

Usage: exec_provider_script.py STORE.json. It speaks certman's exec protocol (environment
variables and JSON on stdin, see certman/dns/exec_provider.py), checks ``expected`` under a lock
(exit 3 on a conflict), appends every action to STORE.json.log, and fails on purpose when the
record name starts with ``fail-`` (exit 1, a message on stderr) or ``slow-`` (sleeps 30 s).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_CONFLICT = 3


def main(store: Path) -> int:
    request = json.load(sys.stdin)
    if request["action"] != os.environ["CERTMAN_ACTION"]:
        print("CERTMAN_ACTION and stdin disagree", file=sys.stderr)
        return 2
    name, rdtype = request["name"], request["type"]
    if name.startswith("fail-"):
        print("some detail\n  zone is read-only  ", file=sys.stderr)
        return 1
    if name.startswith("slow-"):
        time.sleep(30)
    with open(f"{store}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(f"{store}.log", "a") as log:
            log.write(f"{request['action']} {name} {rdtype}\n")
        records: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {}
        key = f"{name}/{rdtype}"
        current = records.get(key)
        if request["action"] == "read":
            print(json.dumps(current))
            return 0
        if "expected" in request and not _same(current, request["expected"]):
            print(f"conflict: {key} is {current}", file=sys.stderr)
            return EXIT_CONFLICT
        if request["action"] == "replace":
            records[key] = {"ttl": request["ttl"], "rdatas": request["rdatas"]}
        else:
            records.pop(key, None)
        temporary = store.with_suffix(".tmp")
        temporary.write_text(json.dumps(records))
        temporary.replace(store)
    return 0


def _same(current: dict[str, Any] | None, expected: dict[str, Any] | None) -> bool:
    if current is None or expected is None:
        return current is expected
    return sorted(current["rdatas"]) == sorted(expected["rdatas"])


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
