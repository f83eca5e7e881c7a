"""The command line: parse arguments, call one plain function per command, print, exit.

``main`` here is the ``certman`` program: an idle ``certman run`` is answered by ``fastpath``
before argparse and the configuration machinery are imported; everything else goes to
``certman.cli.main.main`` (which tests and tools call directly, without the fast path).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing import`: typing alone costs ~2 ms at start-up

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from certman.cli import fastpath

    code = fastpath.try_run(argv)
    if code is not None:
        return code
    # Note: importing the submodule rebinds the package attribute ``certman.cli.main`` to it;
    # this function is already running (and the console script holds it), so that is harmless.
    from certman.cli.main import main as full

    return full(argv)
