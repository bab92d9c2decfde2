"""``python -m wfstate``: the operator's command line.

Subcommands grow with the store (``recover``, ``verify``, ``inspect`` … arrive with their
issues); for now ``demo`` runs the crash demo of :mod:`wfstate.demo`.
"""

from __future__ import annotations

import sys

from wfstate.demo import main as demo_main

USAGE = """usage: python -m wfstate COMMAND [ARGS]

commands:
  demo      a writer is SIGKILLed mid-stream; reopen and check nothing acknowledged was lost
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "demo":
        return demo_main(rest)
    print(f"wfstate: unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
    return 2
