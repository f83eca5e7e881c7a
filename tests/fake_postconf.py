"""A stand-in for ``postconf`` / ``postfix`` with the semantics certman relies on, recording calls.

main.cf is a dict of explicit settings; ``-x`` expands ``$name`` / ``${name}`` against explicit
values and Postfix's defaults, ``-e`` sets (all at once), ``-X`` removes, ``-n`` shows explicit
settings, ``-d`` defaults. ``fail_on`` makes the first call whose argv contains that word fail,
to simulate a crash or a refused command at that step.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certman.config.schema import PostfixConfig

DEFAULTS = {
    "smtpd_tls_chain_files": "",
    "smtpd_tls_cert_file": "",
    "smtpd_tls_key_file": "$smtpd_tls_cert_file",
    "smtpd_tls_eccert_file": "",
    "smtpd_tls_eckey_file": "$smtpd_tls_eccert_file",
    "queue_directory": "/var/spool/postfix",
    "mail_version": "3.7.11",
}


class Crash(Exception):
    """Raised by the fake runner to simulate certman dying at that step."""


@dataclass
class FakePostfix:
    config_dir: Path
    main_cf: dict[str, str] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    fail_on: str | None = None
    crash_on: str | None = None
    reloads: int = 0

    def config(self) -> PostfixConfig:
        return PostfixConfig(self.config_dir, "postconf", "postfix", None)

    def _value(self, name: str) -> str | None:
        if name == "config_directory":
            return str(self.config_dir)
        return self.main_cf.get(name, DEFAULTS.get(name))

    def expand(self, value: str) -> str:
        def sub(m: re.Match[str]) -> str:
            inner = self._value(m.group(1) or m.group(2))
            return self.expand(inner) if inner is not None else ""

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, value)

    def __call__(self, argv: Sequence[str], **_: Any) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        if self.crash_on is not None and self.crash_on in argv:
            raise Crash(" ".join(argv))
        if self.fail_on is not None and self.fail_on in argv:
            self.fail_on = None
            return subprocess.CompletedProcess(argv, 1, "", f"{argv[0]}: fatal: simulated\n")
        if argv[0] == "postfix":
            self.reloads += argv[-1] == "reload"
            return subprocess.CompletedProcess(argv, 0, "", "")
        assert argv[1:3] == ["-c", str(self.config_dir)], argv
        return subprocess.CompletedProcess(argv, 0, self._postconf(argv[3], argv[4:]), "")

    def _postconf(self, mode: str, args: list[str]) -> str:
        if mode == "-e":
            updates = dict(arg.split("=", 1) for arg in args)
            self.main_cf = {**self.main_cf, **{k: v.strip() for k, v in updates.items()}}
            return ""
        if mode == "-X":
            self.main_cf = {k: v for k, v in self.main_cf.items() if k not in args}
            return ""
        lines = []
        for name in args:
            if mode == "-n":
                if name in self.main_cf:
                    lines.append(f"{name} = {self.main_cf[name]}")
            elif mode == "-d":
                lines.append(f"{name} = {DEFAULTS.get(name, '')}")
            elif mode == "-x":
                lines.append(f"{name} = {self.expand(self._value(name) or '')}")
        return "".join(f"{line}\n".replace(" = \n", " =\n") for line in lines)

    def postconf_calls(self, mode: str) -> list[list[str]]:
        return [c for c in self.calls if c[0] == "postconf" and c[3] == mode]
