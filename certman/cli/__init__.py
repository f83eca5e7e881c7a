"""The command line: parse arguments, call one plain function per command, print, exit."""

from certman.cli.main import main

__all__ = ["main"]
