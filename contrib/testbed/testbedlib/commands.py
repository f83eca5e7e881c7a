"""The subcommands: up, down, exec, retransfer, status."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from . import bind, unbound
from .context import ADDRESSES, CA_RESOLVER, MX, RESOLVER, SECONDARY, Context, Options
from .motoserver import start_moto
from .pdns import start_pdns
from .pebble import start_pebble
from .postfix import make_initial_chain, start_postfix, write_client_config
from .proc import (
    NETNS_RUN_DIR,
    PidFile,
    TestbedError,
    create_netns,
    delete_netns,
    enter_netns,
    is_running,
    netns_inode,
    run,
    stop_all,
)

JSON_NAME = "testbed.json"
RETRANSFER_SECONDS = 10.0
# Everything `up` writes under DIR, removed before the next `up`.
GENERATED = (
    "bind", "bind-primary", "bind-secondary", "tsig", "unbound", "unbound-ca", "pdns",
    "pebble", "postfix-mx1", "postfix-mx2", "postfix-client", "spool", "logs", "run", JSON_NAME,
)  # fmt: skip


def _netns_file(directory: Path) -> Path:
    return directory / "run" / "netns"


def _pid_file(directory: Path) -> PidFile:
    return PidFile(directory / "run" / "pids")


# --- up ----------------------------------------------------------------------------------------


def up(opts: Options) -> Path:
    """Start every server in a new namespace; return the path of testbed.json."""
    if _netns_file(opts.dir).exists() or _pid_file(opts.dir).path.exists():
        down(opts.dir)
    if (NETNS_RUN_DIR / opts.netns).exists():
        raise TestbedError(f"network namespace {opts.netns} exists already")
    _clean(opts.dir)
    # Recorded before anything exists, so `down` can clean up after a crash at any point.
    _netns_file(opts.dir).parent.mkdir(parents=True)
    _netns_file(opts.dir).write_text(opts.netns + "\n")
    ctx = Context(opts, _pid_file(opts.dir), threading.Event())
    try:
        create_netns(opts.netns, ADDRESSES, RESOLVER)
        enter_netns(opts.netns)  # before any thread starts: new threads inherit it
        info = _start_all(ctx)
    except BaseException:
        ctx.abort.set()
        down(opts.dir)
        raise
    path = opts.dir / JSON_NAME
    _write_json(path, info)
    return path


def _clean(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in GENERATED:
        path = directory / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _start_all(ctx: Context) -> dict[str, Any]:
    keys = bind.make_keys(ctx)
    tlsa = {name: make_initial_chain(ctx, name) for name in MX}
    with ThreadPoolExecutor(max_workers=8) as pool:
        pdns = pool.submit(start_pdns, ctx) if ctx.opts.pdns else None
        tasks: dict[str, Future[Any]] = {
            "pebble": pool.submit(start_pebble, ctx),
            **{name: pool.submit(start_postfix, ctx, name, tlsa[name]) for name in MX},
            "dns": pool.submit(_start_dns, ctx, keys, tlsa["mx1"], pdns),
        }
        if ctx.opts.moto:
            tasks["moto"] = pool.submit(start_moto, ctx)
        _raise_first_failure(ctx, [*tasks.values(), *([pdns] if pdns else [])])
    return _testbed_json(ctx, keys, {k: f.result() for k, f in tasks.items()})


def _raise_first_failure(ctx: Context, futures: Sequence[Future[Any]]) -> None:
    """Wait for every start step; on the first failure, make the others give up, then
    raise that first failure (not the knock-on ones)."""
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:  # interrupted: the steps give up before the pool is joined
        ctx.abort.set()
        raise
    errors = [f.exception() for f in futures if f in done]
    first = next((error for error in errors if error is not None), None)
    if first is not None:
        ctx.abort.set()
        wait(futures)
        raise first


def _start_dns(
    ctx: Context, keys: bind.Keys, broken_tlsa: str, pdns: Future[tuple[str, Any]] | None
) -> dict[str, Any]:
    """BIND, then (with the zones' keys known) both Unbound instances."""
    anchors = bind.start_bind(ctx, keys, broken_tlsa)
    # A DS whose digest matches no key: every validating lookup in broken.test is bogus.
    anchors["broken.test"] = _wrong_digest(anchors["broken.test"])
    pdns_info = None
    if pdns is not None:
        anchors["pdns.test"], pdns_info = pdns.result()
    zones = unbound.stubs(pdns is not None)
    starts = [(instance, anchors, zones) for instance in (unbound.DANE, unbound.CA)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(unbound.start_unbound, ctx, *args) for args in starts]:
            future.result()
    return {"pdns": pdns_info, "anchors": anchors}


def _wrong_digest(ds: str) -> str:
    last = ds[-1]
    return ds[:-1] + ("1" if last == "0" else "0")


def _testbed_json(ctx: Context, keys: bind.Keys, results: dict[str, Any]) -> dict[str, Any]:
    """The contract the tests code against (tests/testbed.py reads it)."""
    opts = ctx.opts
    return {
        "netns": opts.netns,
        "dir": str(opts.dir),
        "resolver": RESOLVER,
        "ca_resolver": CA_RESOLVER,
        "resolv_conf": f"/etc/netns/{opts.netns}/resolv.conf",
        "unbound": unbound.unbound_json(ctx, unbound.DANE),
        "unbound_ca": unbound.unbound_json(ctx, unbound.CA),
        "bind": bind.bind_json(keys),
        "trust_anchors": results["dns"]["anchors"],
        "pdns": results["dns"]["pdns"],
        "pebble": results["pebble"],
        "moto": results.get("moto"),
        "postfix": {name: results[name] for name in MX},
        "postfix_client_config": str(write_client_config(ctx)),
        "pids": {r.name: r.pid for r in ctx.pids.records() if r.pid},
        "logs": {p.name: str(p) for p in sorted((opts.dir / "logs").iterdir())},
    }


def _write_json(path: Path, info: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(info, indent=2) + "\n")
    temporary.replace(path)


# --- down, exec, retransfer, status -----------------------------------------------------------


def down(directory: Path) -> None:
    """Stop what `up` started (also after a crash of `up`), delete the namespace."""
    netns = _recorded_netns(directory)
    pids = _pid_file(directory)
    stop_all(pids.records(), netns_inode(netns) if netns else None)
    if netns:
        delete_netns(netns)
    (directory / JSON_NAME).unlink(missing_ok=True)
    shutil.rmtree(directory / "run", ignore_errors=True)


def _recorded_netns(directory: Path) -> str | None:
    try:
        return _netns_file(directory).read_text().strip() or None
    except OSError:
        return None


def _required_netns(directory: Path) -> str:
    netns = _recorded_netns(directory)
    if netns is None:
        raise TestbedError(f"{directory}: no testbed is up there (no run/netns)")
    return netns


def exec_in(directory: Path, argv: Sequence[str]) -> None:
    """Replace this process with `ip netns exec NS ARGV...`."""
    netns = _required_netns(directory)
    os.execvp("ip", ["ip", "netns", "exec", netns, *argv])


def retransfer(directory: Path, zone: str) -> None:
    """Make the secondary transfer `zone` now and wait until it serves the primary's serial."""
    info = json.loads((directory / JSON_NAME).read_text())
    enter_netns(_required_netns(directory))
    run([*info["bind"]["rndc"]["secondary"], "retransfer", zone])
    _poll(lambda: bind.in_sync(zone), RETRANSFER_SECONDS, f"{SECONDARY} did not catch up on {zone}")


def _poll(condition: Callable[[], bool], seconds: float, failure: str) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise TestbedError(failure)
        time.sleep(0.02)


def status(directory: Path) -> bool:
    """Print each recorded process and whether it runs; true when all do."""
    netns = _recorded_netns(directory)
    print(f"netns {netns or '-'}: {'present' if netns and netns_inode(netns) else 'absent'}")
    all_running = netns is not None
    for record in _pid_file(directory).records():
        if record.pid:
            running = is_running(record.pid, record.start)
            all_running &= running
            print(f"{record.name} pid {record.pid}: {'running' if running else 'stopped'}")
    return all_running
