"""Every certificate a real Postfix host serves, on the testbed: main.cf (25), master.cf services
(submission 587 with STARTTLS, submissions 465 with implicit TLS) and one SNI name, each its own
certificate with its own TLSA RRset; and two Postfix instances from one configuration (postmulti).

A rollover of one certificate must leave every other target's files, settings and TLSA records
as they were, while a DANE prober (posttls-finger) on every port sees no failure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from helpers import Prober, config_header, posttls_finger
from testbed import Testbed

from certman import keys
from certman.cli.main import main
from certman.config.load import load_config as load
from certman.config.schema import PostfixConfig
from certman.dane.probe import fetch_chain, names_host
from certman.dns.provider import DnsProvider, ProviderContext, RRset, create_provider
from certman.lifecycle.state import Phase
from certman.lifecycle.statefile import CertDir
from certman.postfix.commands import Postfix

pytestmark = pytest.mark.integration

MX1 = "127.0.0.25"
# certificate name -> (host, port, target, posttls-finger options)
TARGETS = {
    "mx1": ("mx1.dane.test", 25, "main.cf", ()),
    "submit": ("submit.dane.test", 587, "submission/inet", ()),
    "smtps": ("smtps.dane.test", 465, "submissions/inet", ("-w",)),
    "sni": ("sni.dane.test", 25, "sni:sni.dane.test", ()),
}


def _cert_block(
    bed: Testbed,
    directory: Path,
    name: str,
    host: str,
    port: int,
    target: str,
    config_dir: Path,
    address: str,
) -> str:
    return f"""
[certificates.{name}]
domains = ["{host}"]

[certificates.{name}.dane]
ports = [{port}]
ttl = 3
margin = 1
probe_address = "{address}"

[certificates.{name}.postfix]
layout = "chain-files"
directory = "{directory / "postfix-files"}"
targets = ["{target}"]
config_dir = "{config_dir}"
"""


def rfc2136(bed: Testbed, config: Path) -> DnsProvider:
    spec = load(config).providers["bind"]
    return create_provider(spec.type, "bind", spec.options, ProviderContext((bed.resolver,)))


@pytest.fixture
def mx1_targets(testbed: Testbed, tmp_path: Path) -> Iterator[Path]:
    """mx1 serving its initial certificate everywhere; a config with four certificates."""
    pf = testbed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    postfix.set({"smtpd_tls_chain_files": str(pf.initial_chain_file)})
    postfix.reload()
    text = config_header(testbed, tmp_path, pf.config_dir) + "".join(
        _cert_block(testbed, tmp_path, name, host, port, target, pf.config_dir, MX1)
        for name, (host, port, target, _) in TARGETS.items()
    )
    config = tmp_path / "certman.toml"
    config.write_text(text)
    dns = rfc2136(testbed, config)
    for name, (host, port, _, _) in TARGETS.items():
        dns.delete(f"_{port}._tcp.{host}", "TLSA")
        if name != "mx1":  # posttls-finger needs the host's address
            dns.replace(RRset.of(host, "A", 3, [MX1]))
    yield config
    for host, port, _, _ in TARGETS.values():
        dns.delete(f"_{port}._tcp.{host}", "TLSA")


def served(host: str, port: int, *, implicit: bool = False, address: str = MX1) -> str:
    chain = fetch_chain(address, port, timeout=5, server_name=host, implicit_tls=implicit)
    return keys.cert_spki_sha256(chain[0])


def tlsa(dns: DnsProvider, host: str, port: int) -> frozenset[str]:
    rrset = dns.read(f"_{port}._tcp.{host}", "TLSA")
    return rrset.rdatas if rrset else frozenset()


def snapshot(bed: Testbed, config: Path) -> dict[str, object]:
    """Every target's served key, TLSA RRset, Postfix settings and certman files."""
    pf = bed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    dns = rfc2136(bed, config)
    files = config.parent / "postfix-files"
    out: dict[str, object] = {
        "main.cf": postfix.get_raw("smtpd_tls_chain_files", "tls_server_sni_maps"),
        "sni-map": (files / "sni-map").read_text(),
    }
    for name, (host, port, target, _) in TARGETS.items():
        out[f"{name} key"] = served(host, port, implicit=port == 465)
        out[f"{name} tlsa"] = tlsa(dns, host, port)
        out[f"{name} file"] = (files / f"{name}-ecdsa-p256.pem").read_bytes()
        if "/" in target:
            out[f"{name} master.cf"] = postfix.get_service(target, "smtpd_tls_chain_files")
    return out


def state_of(config: Path, name: str) -> object:
    return CertDir.of(load(config).state_dir, name).load(name)


def test_each_target_serves_its_own_certificate_and_a_rollover_touches_no_other(
    testbed: Testbed, mx1_targets: Path
) -> None:
    config = mx1_targets
    # First run: every certificate adopts and publishes before any installs (max-wait 0).
    assert main(["--config", str(config), "run"]) == 0
    assert main(["--config", str(config), "run", "--max-wait", "120"]) == 0
    keys_served = {}
    for name, (host, port, _, options) in TARGETS.items():
        state = state_of(config, name)
        assert state.phase is Phase.STEADY, name  # type: ignore[attr-defined]
        current = state.current["ecdsa-p256"].spki_sha256  # type: ignore[attr-defined]
        assert served(host, port, implicit=port == 465) == current, name
        keys_served[name] = current
        ok, output = posttls_finger(testbed, host, MX1, options, port=port)
        assert ok, f"{name}: {output}"
    for name, (host, port, _, _) in TARGETS.items():  # each target its own certificate
        chain = fetch_chain(MX1, port, timeout=5, server_name=host, implicit_tls=port == 465)
        assert names_host(chain[0], host), name
    for name in ("submit", "mx1", "sni", "smtps"):
        roll_one_and_check_the_others(testbed, config, name)


def roll_one_and_check_the_others(testbed: Testbed, config: Path, name: str) -> None:
    before = snapshot(testbed, config)
    probers = [
        Prober(testbed, host, MX1, options=options, port=port)
        for host, port, _, options in TARGETS.values()
    ]
    with ExitStack() as stack:
        for prober in probers:
            stack.enter_context(prober.running())
        assert main(["--config", str(config), "rollover", name]) == 0
        time.sleep(7)  # 2 x TTL + 1: the retired record leaves the caches meanwhile
    after = snapshot(testbed, config)
    changed = {k for k in before if before[k] != after[k]}
    expected = {f"{name} key", f"{name} tlsa", f"{name} file"}
    assert changed == expected, (name, changed)
    for prober in probers:
        assert len(prober.results) >= 5, prober.host
        assert prober.failures == [], (name, prober.host, prober.port, prober.failures[:3])


def test_two_postfix_instances_from_one_configuration(testbed: Testbed, tmp_path: Path) -> None:
    """postmulti-style: each certificate names its instance's config_dir; every postconf and
    reload goes to that instance; the instance in [postfix] is only the default."""
    mx1, mx2 = testbed.postfix["mx1"], testbed.postfix["mx2"]
    for pf in (mx1, mx2):
        postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
        postfix.set({"smtpd_tls_chain_files": str(pf.initial_chain_file)})
        postfix.reload()
    config = tmp_path / "certman.toml"
    config.write_text(
        config_header(testbed, tmp_path, mx1.config_dir)
        + _cert_block(
            testbed, tmp_path, "mx1", mx1.host, 25, "main.cf", mx1.config_dir, mx1.address
        )
        + _cert_block(
            testbed, tmp_path, "mx2", mx2.host, 25, "main.cf", mx2.config_dir, mx2.address
        )
    )
    dns = rfc2136(testbed, config)
    for pf in (mx1, mx2):
        dns.delete(f"_25._tcp.{pf.host}", "TLSA")
    try:
        assert main(["--config", str(config), "run"]) == 0
        assert main(["--config", str(config), "run", "--max-wait", "120"]) == 0
        for pf in (mx1, mx2):
            state = state_of(config, pf.name)
            assert state.phase is Phase.STEADY  # type: ignore[attr-defined]
            key = state.current["ecdsa-p256"]  # type: ignore[attr-defined]
            assert served(pf.host, 25, address=pf.address) == key.spki_sha256
            main_cf = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
            chain_files = main_cf.get("smtpd_tls_chain_files")["smtpd_tls_chain_files"]
            assert chain_files.endswith(f"{pf.name}-ecdsa-p256.pem")
            ok, output = testbed.posttls_finger(pf.host, pf.address)
            assert ok, output
    finally:
        for pf in (mx1, mx2):
            dns.delete(f"_25._tcp.{pf.host}", "TLSA")


def test_a_certificate_without_dane_is_verified_and_rolled_back_alone(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No [dane] table: the served leaf must still be the certificate just installed. Here
    master.cf's smtp service overrides main.cf's files (an operator's forgotten -o), so port 25
    keeps serving the old certificate: the install is rolled back, main.cf is as before, and the
    submission service's own setting is untouched."""
    pf = testbed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    initial = str(pf.initial_chain_file)
    postfix.set({"smtpd_tls_chain_files": initial})
    postfix.set_service("smtp/inet", {"smtpd_tls_chain_files": initial})
    postfix.set_service("submission/inet", {"smtpd_tls_chain_files": initial})
    postfix.reload()
    block = _cert_block(testbed, tmp_path, "mx1", pf.host, 25, "main.cf", pf.config_dir, MX1)
    block = (
        block[: block.index("[certificates.mx1.dane]")]
        + block[block.index("[certificates.mx1.postfix]") :]
    )
    block = block.replace(
        'targets = ["main.cf"]', f'targets = ["main.cf"]\nprobe_address = "{MX1}"'
    )
    config = tmp_path / "certman.toml"
    config.write_text(config_header(testbed, tmp_path, pf.config_dir) + block)
    assert main(["--config", str(config), "run", "--max-wait", "60"]) == 1
    err = capsys.readouterr().err
    assert "main.cf 127.0.0.25:25 serves certificate" in err, err
    assert "previous certificate restored" in err, err
    assert postfix.get_raw("smtpd_tls_chain_files") == {"smtpd_tls_chain_files": initial}
    assert postfix.get_service("submission/inet", "smtpd_tls_chain_files") == {
        "smtpd_tls_chain_files": initial
    }
    state = state_of(config, "mx1")
    assert state.phase is Phase.STEADY and state.last_error  # type: ignore[attr-defined]


def test_one_run_switches_every_target_with_one_reload(
    testbed: Testbed, mx1_targets: Path, tmp_path: Path
) -> None:
    """Four certificates of one instance due in the same `certman run`, advanced four at a time
    ([acme] concurrency): each switches its own target, then one reload covers them all, and
    each is verified live afterwards (issue 12: "one reload covers all changes of a run")."""
    config = mx1_targets
    pf = testbed.postfix["mx1"]
    reloads = tmp_path / "reloads.log"
    script = tmp_path / "reload.sh"
    script.write_text(
        f'#!/bin/sh\necho reload >> "{reloads}"\nexec postfix -c "{pf.config_dir}" reload\n'
    )
    script.chmod(0o755)
    text = config.read_text()
    text = text.replace("[acme]\n", "[acme]\nconcurrency = 4\n", 1)
    text = text.replace("[postfix]\n", f'[postfix]\nreload_command = ["{script}"]\n', 1)
    config.write_text(text)
    assert main(["--config", str(config), "run", "--max-wait", "0"]) == 0  # adopt, publish
    reloads.unlink(missing_ok=True)
    assert main(["--config", str(config), "run", "--max-wait", "120"]) == 0
    assert reloads.read_text().splitlines() == ["reload"]  # one, for four switched targets
    for name, (host, port, _, options) in TARGETS.items():
        state = state_of(config, name)
        assert state.phase is Phase.STEADY and not state.reload_pending, name  # type: ignore[attr-defined]
        assert state.certs, name  # type: ignore[attr-defined]
        staged_serial = state.certs["ecdsa-p256"].serial  # type: ignore[attr-defined]
        chain = fetch_chain(MX1, port, timeout=5, server_name=host, implicit_tls=port == 465)
        assert f"{chain[0].serial_number:x}" == staged_serial, name
        ok, output = posttls_finger(testbed, host, MX1, options, port=port)
        assert ok, f"{name}: {output}"


def test_check_probes_every_target_and_reports_a_stale_service(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One certificate on main.cf (25, DANE) and on submissions (465, implicit TLS, no TLSA):
    `certman check` probes 465 too, with implicit TLS, and reports the service when it serves
    an older certificate than certman installed (before, check probed only [dane] ports)."""
    pf = testbed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    initial = str(pf.initial_chain_file)
    postfix.set({"smtpd_tls_chain_files": initial})
    postfix.set_service("submissions/inet", {"smtpd_tls_chain_files": initial})
    postfix.reload()
    block = _cert_block(testbed, tmp_path, "mx1", pf.host, 25, "main.cf", pf.config_dir, MX1)
    block = block.replace('targets = ["main.cf"]', 'targets = ["main.cf", "submissions/inet"]')
    config = tmp_path / "certman.toml"
    config.write_text(config_header(testbed, tmp_path, pf.config_dir) + block)
    dns = rfc2136(testbed, config)
    dns.delete(f"_25._tcp.{pf.host}", "TLSA")
    try:
        assert main(["--config", str(config), "run"]) == 0
        assert main(["--config", str(config), "run", "--max-wait", "120"]) == 0
        state = state_of(config, "mx1")
        installed = state.certs["ecdsa-p256"].serial  # type: ignore[attr-defined]
        capsys.readouterr()
        main(["--config", str(config), "check"])
        out = capsys.readouterr().out
        assert "mx1.dane.test:465" not in out.split(" | ")[0], out
        assert "OK: tlsa: mx1.dane.test:25: chain matches" in out, out

        postfix.set_service("submissions/inet", {"smtpd_tls_chain_files": initial})
        postfix.reload()
        old = fetch_chain(MX1, 465, timeout=5, server_name=pf.host, implicit_tls=True)[0]
        assert f"{old.serial_number:x}" != installed
        code = main(["--config", str(config), "check"])
        out = capsys.readouterr().out
        assert code == 1, out
        assert (
            f"WARNING: served: mx1.dane.test:465: submissions/inet serves certificate "
            f"{old.serial_number:x}, not {installed} that certman installed"
        ) in out, out
        assert "mx1.dane.test:25: main.cf serves" not in out, out
    finally:
        dns.delete(f"_25._tcp.{pf.host}", "TLSA")
        postfix.unset_service("submissions/inet", "smtpd_tls_chain_files")
        postfix.reload()


@pytest.mark.parametrize("service_setting", ["inherited", "same files"])
def test_a_service_certificate_rolls_from_main_cf_key_to_its_own(  # noqa: PLR0915
    testbed: Testbed, tmp_path: Path, service_setting: str
) -> None:
    """mx1 on main.cf and smtps on submissions (465), adopted in the same first run, while the
    service serves main.cf's files (no -o of its own, or an -o naming the same files). main.cf
    owns that key. smtps adopts it only for as long as 465 serves it (so its TLSA RRset matches
    what is served), then rolls to a key of its own; no key ends up held by both, and neither
    port ever fails a DANE prober."""
    pf = testbed.postfix["mx1"]
    postfix = Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))
    initial = str(pf.initial_chain_file)
    postfix.set({"smtpd_tls_chain_files": initial})
    postfix.unset_service("submissions/inet", "smtpd_tls_chain_files")
    if service_setting == "same files":
        postfix.set_service("submissions/inet", {"smtpd_tls_chain_files": initial})
    postfix.reload()
    config = tmp_path / "certman.toml"
    config.write_text(
        config_header(testbed, tmp_path, pf.config_dir)
        + _cert_block(testbed, tmp_path, "smtps", *TARGETS["smtps"][:3], pf.config_dir, MX1)
        + _cert_block(testbed, tmp_path, "mx1", *TARGETS["mx1"][:3], pf.config_dir, MX1)
    )
    dns = rfc2136(testbed, config)
    names = [("smtps.dane.test", 465), ("mx1.dane.test", 25)]
    for host, port in names:
        dns.delete(f"_{port}._tcp.{host}", "TLSA")
    dns.replace(RRset.of("smtps.dane.test", "A", 3, [MX1]))
    try:
        served_key = served(pf.host, 25)
        assert main(["--config", str(config), "run", "--max-wait", "0"]) == 0
        mx1, smtps = state_of(config, "mx1"), state_of(config, "smtps")
        assert mx1.current["ecdsa-p256"].spki_sha256 == served_key  # type: ignore[attr-defined]
        assert not mx1.own_key_due  # type: ignore[attr-defined]
        assert smtps.current["ecdsa-p256"].spki_sha256 == served_key  # type: ignore[attr-defined]
        assert smtps.own_key_due  # type: ignore[attr-defined]
        note = " ".join(smtps.history)  # type: ignore[attr-defined]
        assert "submissions/inet serves" in note and "its own key" in note, note
        deadline = time.time() + 60
        # The probers start once a DANE client can see both names' records (A and TLSA).
        while not all(
            posttls_finger(testbed, host, MX1, ("-w",) if port == 465 else (), port=port)[0]
            for host, port in names
        ):
            assert time.time() < deadline, "records never became visible to the resolver"
            main(["--config", str(config), "run", "--max-wait", "0"])
            time.sleep(1)
        probers = [
            Prober(testbed, "smtps.dane.test", MX1, options=("-w",), port=465),
            Prober(testbed, pf.host, MX1, port=25),
        ]
        with ExitStack() as stack:
            for prober in probers:
                stack.enter_context(prober.running())
            deadline = time.time() + 120
            while True:
                assert main(["--config", str(config), "run", "--max-wait", "30"]) == 0
                smtps = state_of(config, "smtps")
                if smtps.phase is Phase.STEADY and not smtps.own_key_due:  # type: ignore[attr-defined]
                    break
                assert time.time() < deadline, smtps
            time.sleep(7)  # 2 x TTL + 1: the retired record leaves the caches meanwhile
        mx1 = state_of(config, "mx1")
        held = [
            k.spki_sha256
            for st in (mx1, smtps)
            for k in (*st.current.values(), *st.next.values())  # type: ignore[attr-defined]
        ]
        assert len(held) == len(set(held)) == 4, held  # no key held twice
        own = smtps.current["ecdsa-p256"].spki_sha256  # type: ignore[attr-defined]
        assert own != served_key and served("smtps.dane.test", 465, implicit=True) == own
        assert served(pf.host, 25) == mx1.current["ecdsa-p256"].spki_sha256  # type: ignore[attr-defined]
        for prober in probers:
            assert len(prober.results) >= 5, prober.host
            assert prober.failures == [], (prober.host, prober.failures[:3])
    finally:
        for host, port in names:
            dns.delete(f"_{port}._tcp.{host}", "TLSA")
        postfix.unset_service("submissions/inet", "smtpd_tls_chain_files")
        postfix.reload()
