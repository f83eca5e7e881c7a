"""The loopback testbed as the tests see it: start and stop it, enter its network namespace,
and ask its servers.

``contrib/testbed/testbed up`` starts BIND (primary + secondary), Unbound (one resolver for the
DANE clients, one for Pebble), PowerDNS, Pebble, two Postfix instances and moto inside one
network namespace and writes ``testbed.json``; :class:`Testbed` is that file, typed. The
pytest process joins the namespace with :func:`enter_netns` and talks to the servers at
their 127.0.0.x addresses on standard ports.
"""

from __future__ import annotations

import ctypes
import json
import os
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

SCRIPT = Path(__file__).resolve().parent.parent / "contrib" / "testbed" / "testbed"
CLONE_NEWNET = 0x40000000  # <sched.h>
NETNS_RUN_DIR = Path("/run/netns")
COMMAND_SECONDS = 60

T = TypeVar("T")


class TestbedFailedError(RuntimeError):
    """The testbed script failed; the message carries its stderr (server and log tail)."""

    __test__ = False


# --- typed views of testbed.json --------------------------------------------------------------


@dataclass(frozen=True)
class Tsig:
    name: str
    algorithm: str
    secret: str
    file: Path


@dataclass(frozen=True)
class Bind:
    primary: str
    secondary: str
    rndc_key: Path
    rndc_commands: Mapping[str, tuple[str, ...]]
    zones: tuple[str, ...]
    default_ttl: int
    negative_ttl: int
    tsig: Tsig


@dataclass(frozen=True)
class Unbound:
    address: str
    conf: Path
    control: tuple[str, ...]


@dataclass(frozen=True)
class Pdns:
    address: str
    api_url: str
    api_key_file: Path
    server_id: str
    zone: str

    @property
    def api_key(self) -> str:
        return self.api_key_file.read_text().strip()


@dataclass(frozen=True)
class Eab:
    kid: str
    hmac_key: str


@dataclass(frozen=True)
class Pebble:
    directory: str
    management: str
    api_ca: Path
    root: Path
    intermediate: Path
    eab: Eab | None
    dns_resolver: str


@dataclass(frozen=True)
class PostfixInstance:
    name: str
    config_dir: Path
    address: str
    host: str
    initial_chain_file: Path
    initial_tlsa: str
    queue_directory: Path
    maillog: Path


@dataclass(frozen=True)
class Testbed:
    """A running testbed, as described by its testbed.json."""

    __test__ = False

    netns: str
    dir: Path
    resolver: str
    ca_resolver: str
    unbound: Unbound
    unbound_ca: Unbound
    bind: Bind
    trust_anchors: Mapping[str, str]
    pdns: Pdns | None
    pebble: Pebble
    moto_endpoint: str | None
    postfix: Mapping[str, PostfixInstance]
    postfix_client_config: Path
    pids: Mapping[str, int]

    @classmethod
    def load(cls, path: Path) -> Testbed:
        data = json.loads(path.read_text())
        return cls(
            netns=data["netns"],
            dir=Path(data["dir"]),
            resolver=data["resolver"],
            ca_resolver=data["ca_resolver"],
            unbound=_unbound(data["unbound"]),
            unbound_ca=_unbound(data["unbound_ca"]),
            bind=_bind(data["bind"]),
            trust_anchors=dict(data["trust_anchors"]),
            pdns=_pdns(data["pdns"]) if data["pdns"] else None,
            pebble=_pebble(data["pebble"]),
            moto_endpoint=data["moto"]["endpoint"] if data["moto"] else None,
            postfix={name: _postfix(name, info) for name, info in data["postfix"].items()},
            postfix_client_config=Path(data["postfix_client_config"]),
            pids=dict(data["pids"]),
        )

    def run_in_netns(
        self,
        cmd: Sequence[str],
        *,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace, where /etc/resolv.conf names the DANE resolver."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *cmd],
            input=stdin,
            capture_output=True,
            text=True,
            check=check,
            env={**os.environ, **(env or {})},
            timeout=COMMAND_SECONDS,
        )

    def rndc(self, server: Literal["primary", "secondary"], *args: str) -> str:
        """`rndc` against one of the BIND servers, e.g. rndc("secondary", "retransfer", Z)."""
        return self.run_in_netns([*self.bind.rndc_commands[server], *args], check=True).stdout

    def retransfer(self, zone: str) -> None:
        """Make the secondary transfer `zone` now and wait until it serves the primary's SOA
        serial (lag.test gets no NOTIFY and refreshes only hourly)."""
        _script("retransfer", "--dir", str(self.dir), zone)

    def unbound_control(self, *args: str, ca: bool = False) -> str:
        """`unbound-control` of the DANE clients' resolver (or of Pebble's, with ca=True),
        e.g. unbound_control("flush_zone", "dane.test")."""
        control = (self.unbound_ca if ca else self.unbound).control
        return self.run_in_netns([*control, *args], check=True).stdout

    def posttls_finger(self, host: str, address: str) -> tuple[bool, str]:
        """DANE-verify `host`'s SMTP server as a validating sender would (RFC 7672):
        posttls-finger looks up the host's address and its _25._tcp TLSA RRset through the
        namespace's validating resolver. True only for a verified connection to `address`.

        posttls-finger always exits 0: the verdict is in its output ("Verified TLS
        connection established" against "Untrusted"/"no matching DANE TLSA records").
        """
        proc = self.run_in_netns(
            ["posttls-finger", "-c", "-l", "dane", f"[{host}]:25"],
            env={"MAIL_CONFIG": str(self.postfix_client_config)},
        )
        output = proc.stdout + proc.stderr
        verified = f"Verified TLS connection established to {host}[{address}]:25" in output
        return verified, output

    def pebble_roots(self) -> list[bytes]:
        """PEM of Pebble's current root certificate(s); they change at every Pebble start."""
        return _call_in_netns(self.netns, self._fetch_pebble_roots)

    def _fetch_pebble_roots(self) -> list[bytes]:
        context = ssl.create_default_context(cafile=str(self.pebble.api_ca))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        roots: list[bytes] = []
        while True:
            try:
                with opener.open(f"{self.pebble.management}/roots/{len(roots)}") as response:
                    roots.append(response.read())
            except urllib.error.HTTPError as error:
                if error.code == 404 and roots:  # past the last alternate root
                    return roots
                raise


def _unbound(data: Any) -> Unbound:
    return Unbound(data["address"], Path(data["conf"]), tuple(data["control"]))


def _bind(data: Any) -> Bind:
    tsig = data["tsig"]
    return Bind(
        primary=data["primary"],
        secondary=data["secondary"],
        rndc_key=Path(data["rndc_key"]),
        rndc_commands={server: tuple(cmd) for server, cmd in data["rndc"].items()},
        zones=tuple(data["zones"]),
        default_ttl=data["default_ttl"],
        negative_ttl=data["negative_ttl"],
        tsig=Tsig(tsig["name"], tsig["algorithm"], tsig["secret"], Path(tsig["file"])),
    )


def _pdns(data: Any) -> Pdns:
    return Pdns(
        data["address"],
        data["api_url"],
        Path(data["api_key_file"]),
        data["server_id"],
        data["zone"],
    )


def _pebble(data: Any) -> Pebble:
    eab = data["eab"]
    return Pebble(
        directory=data["directory"],
        management=data["management"],
        api_ca=Path(data["api_ca"]),
        root=Path(data["root"]),
        intermediate=Path(data["intermediate"]),
        eab=Eab(eab["kid"], eab["hmac_key"]) if eab else None,
        dns_resolver=data["dns_resolver"],
    )


def _postfix(name: str, data: Any) -> PostfixInstance:
    return PostfixInstance(
        name=name,
        config_dir=Path(data["config_dir"]),
        address=data["address"],
        host=data["host"],
        initial_chain_file=Path(data["initial_chain_file"]),
        initial_tlsa=data["initial_tlsa"],
        queue_directory=Path(data["queue_directory"]),
        maillog=Path(data["maillog"]),
    )


# --- starting, stopping, entering -------------------------------------------------------------


def start_testbed(
    directory: Path,
    *,
    name: str | None = None,
    nonce_reject: int = 0,
    va_sleep: bool = False,
    cert_validity: int | None = None,
    moto_python: str | None = None,
    pdns: bool = True,
    moto: bool = True,
    eab: bool = False,
) -> Testbed:
    """Bring the testbed up in `directory`. A server that does not start raises
    TestbedFailedError (tests fail, they never skip). moto runs under this interpreter
    unless `moto_python` names another."""
    args = ["up", "--dir", str(directory), "--nonce-reject", str(nonce_reject)]
    args += ["--name", name] if name else []
    args += ["--cert-validity", str(cert_validity)] if cert_validity is not None else []
    args += ["--moto-python", moto_python] if moto_python else []
    flags = {"--va-sleep": va_sleep, "--no-pdns": not pdns, "--no-moto": not moto, "--eab": eab}
    args += [flag for flag, wanted in flags.items() if wanted]
    output = _script(*args)
    return Testbed.load(Path(output.strip().splitlines()[-1]))


def stop_testbed(directory: Path) -> None:
    """Stop every server of the testbed in `directory` and delete its namespace."""
    _script("down", "--dir", str(directory))


def _script(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=COMMAND_SECONDS,
    )
    if proc.returncode != 0:
        raise TestbedFailedError(
            proc.stderr.strip() or f"testbed {args[0]}: exit {proc.returncode}"
        )
    return proc.stdout


def enter_netns(name: str) -> None:
    """Move the calling process into the namespace with setns(2) (Python 3.11 has no
    os.setns). The namespace is per thread: call this before any thread is started, so
    every thread started later inherits it."""
    if threading.active_count() > 1:
        raise RuntimeError("enter_netns: other threads are running and would stay outside")
    _setns(name)


def _setns(name: str) -> None:
    """Move the calling thread into the namespace and check that it is there."""
    libc = ctypes.CDLL(None, use_errno=True)
    with (NETNS_RUN_DIR / name).open("rb") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into network namespace {name}: {os.strerror(errno)}")
    if not _inside(name):
        raise RuntimeError(f"setns succeeded but this thread is not in {name}")


def _inside(name: str) -> bool:
    here = os.stat("/proc/thread-self/ns/net").st_ino
    return here == (NETNS_RUN_DIR / name).stat().st_ino


def _call_in_netns(name: str, function: Callable[[], T]) -> T:
    """Call `function` inside the namespace: directly if this thread is there already,
    otherwise in a short-lived thread that enters it (setns moves only the calling thread)."""
    if _inside(name):
        return function()
    results: list[T] = []
    errors: list[BaseException] = []

    def enter_and_call() -> None:
        try:
            _setns(name)
            results.append(function())
        except BaseException as error:  # handed to the calling thread
            errors.append(error)

    worker = threading.Thread(target=enter_and_call)
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return results[0]
