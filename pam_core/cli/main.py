"""`pam`: the parser of every command, and how a run ends: 0, or one `pam: error:` line and exit status 2 for bad
input and missing files (1 is `pam parity`'s FAIL), 130 when interrupted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

from ..errors import PAMError
from . import describe, describe_dataset, describe_video, eval, parity, search

# each adds its parser, whose `run` default runs it
COMMANDS = (describe, describe_dataset, describe_video, parity, eval, search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pam", description="Perceive Anything Model: masks and text for image "
                                                             "and video regions.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (PAMError, OSError) as exc:  # OSError: e.g. an output folder that cannot be written
        if args.debug:
            raise
        for problem in getattr(exc, "problems", ()):  # e.g. every malformed row of a manifest, one per line
            print(problem, file=sys.stderr)
        print(f"pam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pam: interrupted", file=sys.stderr)
        return 130
