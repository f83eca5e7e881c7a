"""The check's result: items with a severity, perfdata, and the plugin output built from them.

Monitoring-plugin conventions (Nagios plugin guidelines, Icinga "Service Monitoring"): exit code
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; the first line is the status and a summary, then ``|``
and the performance data (``'label'=value[UOM];warn;crit;min;max``); the details follow, one
per line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Severity(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# Which item decides the overall state: CRITICAL beats UNKNOWN beats WARNING beats OK.
_RANK = {Severity.OK: 0, Severity.WARNING: 1, Severity.UNKNOWN: 2, Severity.CRITICAL: 3}


@dataclass(frozen=True)
class Item:
    """One finding of one check; ``check`` names the kind (stable, for tests and dashboards)."""

    severity: Severity
    check: str  # "tlsa", "expiry", "state", "dhparams", "postfix", "timeout"
    subject: str  # the certificate, endpoint, file or setting concerned
    message: str
    why: str | None = None
    fix: str | None = None

    def line(self) -> str:
        extra = "".join(
            f"; {label}: {text}" for label, text in (("why", self.why), ("fix", self.fix)) if text
        )
        return f"{self.severity.name}: {self.check}: {self.subject}: {self.message}{extra}"

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity.name,
            "check": self.check,
            "subject": self.subject,
            "message": self.message,
            "why": self.why,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Perf:
    label: str
    value: float
    uom: str = ""
    warn: float | None = None
    crit: float | None = None

    def text(self) -> str:
        def num(v: float | None) -> str:
            return "" if v is None else f"{v:g}"

        return f"'{self.label}'={self.value:g}{self.uom};{num(self.warn)};{num(self.crit)}"


@dataclass(frozen=True)
class Report:
    items: tuple[Item, ...]
    perfdata: tuple[Perf, ...] = ()
    elapsed: float = 0.0
    timed_out: bool = False
    checked: tuple[str, ...] = field(default=())  # what was looked at, for the OK summary

    @property
    def severity(self) -> Severity:
        if self.timed_out:
            return Severity.UNKNOWN
        return max((i.severity for i in self.items), key=_RANK.__getitem__, default=Severity.OK)

    def problems(self) -> list[Item]:
        ranked = sorted(self.items, key=lambda i: -_RANK[i.severity])
        return [i for i in ranked if i.severity is not Severity.OK]

    def summary(self) -> str:
        problems = self.problems()
        if not problems:
            return f"{len(self.items)} checks passed"
        head = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"{head.subject}: {head.message}{more}"

    def lines(self) -> list[str]:
        """The plugin output: status line with perfdata first, then every item."""
        perf = " ".join(p.text() for p in (*self.perfdata, Perf("time", self.elapsed, "s")))
        status = f"CERTMAN {self.severity.name} - {self.summary()} | {perf}"
        details = [i.line() for i in self.problems()]
        details += [i.line() for i in self.items if i.severity is Severity.OK]
        return [status, *details]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.severity.name,
            "exit_code": int(self.severity),
            "summary": self.summary(),
            "timed_out": self.timed_out,
            "elapsed": round(self.elapsed, 3),
            "items": [i.to_json() for i in self.items],
            "perfdata": [
                {"label": p.label, "value": p.value, "uom": p.uom, "warn": p.warn, "crit": p.crit}
                for p in self.perfdata
            ],
        }
