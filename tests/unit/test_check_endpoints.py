"""The live side of `certman check` (monitor/endpoints.py): the bounded pool of daemon threads,
the runner that answers each distinct postconf call once, and the endpoints of every target,
one probe per distinct (address, port, protocol, SNI name)."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from certgen import certificate_config as certificate

from certman.config.schema import DaneConfig, PostfixConfig, Target
from certman.monitor.endpoints import CachedRunner, Job, Pool, endpoints
from certman.postfix.commands import Postfix


def test_the_pool_runs_every_job_with_at_most_its_size_at_once() -> None:
    lock = threading.Lock()
    running, peak = [0], [0]

    def work(n: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return n * n

    pool = Pool(4)
    jobs = [pool.submit(Job(str(n), lambda n=n: work(n))) for n in range(40)]  # type: ignore[misc]
    for job in jobs:
        assert job.done.wait(10)
    assert [j.value for j in jobs] == [n * n for n in range(40)]
    assert 1 < peak[0] <= 4
    late = pool.submit(Job("late", lambda: 1 // 0))  # after every worker left: one starts again
    assert late.done.wait(5) and isinstance(late.error, ZeroDivisionError)


def test_each_distinct_postconf_call_runs_once_even_when_asked_at_once() -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        time.sleep(0.02)
        return subprocess.CompletedProcess(argv, 0, f"{argv[-1]} = x\n", "")

    runner = CachedRunner(fake_run)
    threads = [
        threading.Thread(target=runner, args=(["postconf", "-x", name],), kwargs={"text": True})
        for name in ("a", "b") * 10
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == [["postconf", "-x", "a"], ["postconf", "-x", "b"]]


def test_every_target_is_an_endpoint_with_its_port_protocol_and_name(tmp_path: Path) -> None:
    """main.cf: each DANE host on each DANE port; a service: its own port, implicit TLS when it
    runs with smtpd_tls_wrappermode; an SNI target: its own name."""

    sni_maps = [""]

    def postconf(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if argv[-1] == "tls_server_sni_maps":
            out = sni_maps[0]
        elif "-M" in argv:
            out = "submissions inet n - y - - smtpd -o smtpd_tls_wrappermode=yes\n"
        elif "-P" in argv:
            out = "submissions/inet/smtpd_tls_wrappermode = yes\n"
        else:
            out = ""
        return subprocess.CompletedProcess(argv, 0, out, "")

    hosts = ("mx1.example.org", "mx2.example.org")
    dane = DaneConfig(hosts, (25,), (), None, 1.0, "dns", "127.0.0.25", 30)
    cert = certificate(tmp_path, name="mail", domains=hosts, dane=dane)
    targets = tuple(
        t for t in map(Target.parse, ("main.cf", "submissions/inet", "sni:mail.example.org")) if t
    )
    cert = replace(cert, install=replace(cert.install, targets=targets))
    postfix = Postfix(PostfixConfig(tmp_path, "postconf", "postfix", None), run=postconf)
    found = [(e.target, e.host, e.port, e.implicit_tls, e.dane) for e in endpoints(cert, postfix)]
    assert found == [
        ("main.cf", "mx1.example.org", 25, False, True),
        ("main.cf", "mx2.example.org", 25, False, True),
        ("submissions/inet", "mx1.example.org", 465, True, False),
        ("submissions/inet", "mx2.example.org", 465, True, False),
        ("sni:mail.example.org", "mail.example.org", 25, False, True),
    ]
    # Without tls_server_sni_maps the name selects nothing: one probe per listener, no SNI sent.
    probes = {e.probe for e in endpoints(cert, postfix)}
    assert {(p.port, p.implicit_tls, p.server_name) for p in probes} == {
        (25, False, None),
        (465, True, None),
    }
    sni_maps[0] = "tls_server_sni_maps = hash:/etc/postfix/sni\n"
    probes = {e.probe for e in endpoints(cert, postfix)}
    assert len(probes) == 5 and all(p.server_name for p in probes)
