"""Postfix instances, each in its own configuration directory, serving STARTTLS."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from pathlib import Path
from typing import Any

from .context import MX, Context
from .pki import make_server_cert, spki_sha256
from .probe import smtp_banner
from .proc import Started, StartError, TestbedError, run, wait_for

# chroot "n" everywhere: a chroot jail under the queue directory would need copies of
# /etc/resolv.conf and friends. submission (587, STARTTLS) and submissions (465, implicit TLS,
# RFC 8314) serve main.cf's certificate until a test gives them -o overrides.
MASTER_CF = """\
smtp       inet      n  -  n  -     -  smtpd
submission inet      n  -  n  -     -  smtpd
submissions inet     n  -  n  -     -  smtpd
  -o smtpd_tls_wrappermode=yes
pickup     unix      n  -  n  60    1  pickup
cleanup    unix      n  -  n  -     0  cleanup
qmgr       unix      n  -  n  300   1  qmgr
tlsmgr     unix      -  -  n  1000? 1  tlsmgr
rewrite    unix      -  -  n  -     -  trivial-rewrite
bounce     unix      -  -  n  -     0  bounce
defer      unix      -  -  n  -     0  bounce
trace      unix      -  -  n  -     0  bounce
verify     unix      -  -  n  -     1  verify
flush      unix      n  -  n  1000? 0  flush
proxymap   unix      -  -  n  -     -  proxymap
proxywrite unix      -  -  n  -     1  proxymap
smtp       unix      -  -  n  -     -  smtp
relay      unix      -  -  n  -     -  smtp
showq      unix      n  -  n  -     -  showq
error      unix      -  -  n  -     -  error
retry      unix      -  -  n  -     -  error
discard    unix      -  -  n  -     -  discard
anvil      unix      -  -  n  -     1  anvil
scache     unix      -  -  n  -     1  scache
postlog    unix-dgram n -  n  -     1  postlogd
"""


# Postfix checks that DNSSEC validation works by asking for "." NS with the AD bit; the
# testbed's resolvers know no root, so the probe asks for a signed test zone instead.
DNSSEC_CLIENT = """\
smtp_dns_support_level = dnssec
dnssec_probe = ns:dane.test
"""


def host(name: str) -> str:
    return f"{name}.dane.test"


def config_dir(ctx: Context, name: str) -> Path:
    return ctx.path(f"postfix-{name}", "main.cf").parent


def make_initial_chain(ctx: Context, name: str) -> str:
    """The "pre-existing" certificate the instance serves before certman takes over: a
    self-signed ECDSA P-256 one, key then certificate in one smtpd_tls_chain_files file.
    Returns the TLSA 3 1 1 data of its key."""
    tls = config_dir(ctx, name) / "tls"
    tls.mkdir(exist_ok=True)
    key, cert = tls / "initial.key", tls / "initial.crt"
    make_server_cert(key, cert, host(name), f"DNS:{host(name)}")
    chain = tls / "initial.pem"
    chain.write_text(key.read_text() + cert.read_text())
    chain.chmod(0o600)
    tlsa = spki_sha256(cert)
    key.unlink()
    return tlsa


def start_postfix(ctx: Context, name: str, tlsa: str) -> dict[str, Any]:
    config = config_dir(ctx, name)
    spool = ctx.path("spool", f"postfix-{name}", "queue").parent
    _write_config(ctx, name, config, spool)
    master_pid = spool / "queue" / "pid" / "master.pid"
    ctx.pids.add(f"postfix-{name}", 0, pid_file=str(master_pid))
    _postfix(ctx, name, config, "check")
    _postfix(ctx, name, config, "start")
    master = _master(ctx, name, master_pid)
    wait_for(master, "an SMTP banner", lambda: smtp_banner(MX[name]), ctx.deadline())
    return {
        "config_dir": str(config),
        "address": MX[name],
        "host": host(name),
        "initial_chain_file": str(config / "tls" / "initial.pem"),
        "initial_tlsa": f"3 1 1 {tlsa}",
        "queue_directory": str(spool / "queue"),
        "maillog": str(_maillog(ctx, name)),
    }


def _maillog(ctx: Context, name: str) -> Path:
    return ctx.path("logs", f"postfix-{name}.maillog")


def write_client_config(ctx: Context) -> Path:
    """A configuration directory for Postfix's client tools (posttls-finger, MAIL_CONFIG=DIR):
    Debian's "No configuration" install leaves no /etc/postfix/main.cf for them."""
    main_cf = ctx.path("postfix-client", "main.cf")
    main_cf.write_text(f"compatibility_level = 3.6\ninet_protocols = ipv4\n{DNSSEC_CLIENT}")
    _backdate(main_cf)
    return main_cf.parent


def _write_config(ctx: Context, name: str, config: Path, spool: Path) -> None:
    (spool / "queue").mkdir(exist_ok=True)
    data = spool / "data"
    data.mkdir(exist_ok=True)
    # data_directory must belong to the mail_owner.
    shutil.chown(data, "postfix", "postfix")
    _let_others_traverse(spool)
    (config / "main.cf").write_text(_main_cf(ctx, name, config, spool))
    (config / "master.cf").write_text(MASTER_CF)
    _backdate(config / "main.cf")


def _backdate(path: Path) -> None:
    """A Postfix program started within a second of a change to main.cf stalled 2-3 s."""
    then = path.stat().st_mtime - 10
    os.utime(path, (then, then))


def _main_cf(ctx: Context, name: str, config: Path, spool: Path) -> str:
    return f"""\
compatibility_level = 3.6
queue_directory = {spool}/queue
data_directory = {spool}/data
myhostname = {host(name)}
mydomain = dane.test
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = {MX[name]}
inet_protocols = ipv4
alias_maps =
alias_database =
maillog_file = {_maillog(ctx, name)}
maillog_file_prefixes = {_maillog(ctx, name).parent}
smtpd_tls_security_level = may
smtpd_tls_chain_files = {config}/tls/initial.pem
smtpd_tls_loglevel = 1
# A daemon that fails at startup makes master wait service_throttle_time (60 s by default)
# before the next try: one such failure (seen once under load, smtpd exit status 1 with no
# log line) timed out four tests' SMTP greetings. 1 s keeps one test's fault in that test.
service_throttle_time = 1s
{DNSSEC_CLIENT}"""


def _let_others_traverse(path: Path) -> None:
    """Postfix's daemons run as user postfix in the queue directory: every directory above
    it needs search permission for others (pytest's basetemp is mode 0700)."""
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _postfix(ctx: Context, name: str, config: Path, command: str) -> None:
    """`postfix -c DIR COMMAND` in the namespace. Postfix writes its errors to stderr only
    when that is a terminal, so it runs under script(1); the output goes to the log."""
    argv = ["postfix", "-c", str(config), command]
    script = ["script", "-q", "-e", "-c", shlex.join(argv), "/dev/null"]
    log = ctx.log(f"postfix-{name}")
    try:
        output = run(["ip", "netns", "exec", ctx.opts.netns, *script])
    except TestbedError as error:
        with log.open("a") as out:
            out.write(f"{error}\n")
        raise StartError(f"postfix-{name}", f"postfix {command} failed", log) from error
    with log.open("a") as out:
        out.write(output)


def _master(ctx: Context, name: str, pid_file: Path) -> Started:
    """Postfix's master daemonizes: record it by the PID in its pid file."""
    log = ctx.log(f"postfix-{name}")
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError) as error:
        raise StartError(f"postfix-{name}", f"no master PID in {pid_file}", log) from error
    ctx.pids.add(f"postfix-{name}", pid)
    return Started(f"postfix-{name}", pid, log)
