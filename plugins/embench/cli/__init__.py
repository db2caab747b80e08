"""The `embench` command line. Errors are one clear line on stderr, never a traceback.

Every subcommand is defined in this package, one module per area (pipeline, gate, store,
report, sweep); options more than one command takes are defined once, in options.py."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from embench.errors import ConfigError, EmbenchError


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration plugin
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"embench: config error: {exc}", file=sys.stderr)
        return 2
    except EmbenchError as exc:
        print(f"embench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("embench: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    from embench.cli import gate, pipeline, report, store, sweep

    parser = argparse.ArgumentParser(prog="embench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-dir", type=Path, help="folder with models.yaml, benchmark.yaml")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in (pipeline, gate, store, report, sweep):
        area.add_commands(commands)
    return parser
