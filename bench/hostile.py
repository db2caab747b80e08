"""Issue 17's hostile battery: 40+ bad or hostile requests against a real inference server, each
with the server's answer, its RSS before and after, and the latency of normal one-sentence
requests sent during the attack against their idle p50.

    .venv/bin/python bench/hostile.py                  # starts its own server (embench prepare)
    .venv/bin/python bench/hostile.py --model-dir DIR  # ... on this prepared variant
    .venv/bin/python bench/hostile.py --url http://127.0.0.1:8080 [--header-timeout-s 10 ...]

Against --url, the --max-* and --*-timeout-s options must state the server's settings (the
attacks are sized from them). The battery itself lives in tests/server/hostile_battery.py,
shared with tests/server/test_hostile.py."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.server_vs_inprocess import prepared_dir  # noqa: E402
from tests.server.hostile_battery import (  # noqa: E402
    TEST_LIMITS,
    Limits,
    run_battery,
    running_server,
    table_header,
    table_row,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="attack this server instead of starting one")
    parser.add_argument("--model-dir", type=Path, help="prepared variant to serve")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--threads", type=int, default=2, help="threads of the started server")
    parser.add_argument("--only", action="append", help="attacks whose name contains this")
    parser.add_argument("--no-retry", action="store_true", help="never rerun a slow attack")
    defaults = TEST_LIMITS
    for limit in dataclasses.fields(Limits):
        parser.add_argument(
            "--" + limit.name.replace("_", "-"),
            type=type(getattr(defaults, limit.name)),
            default=None,
            help=f"the server's setting (default: {getattr(defaults, limit.name)} for a "
            f"started server, {getattr(Limits(), limit.name)} with --url)",
        )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    base = Limits() if args.url else TEST_LIMITS
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Limits)
        if getattr(args, f.name) is not None
    }
    limits = dataclasses.replace(base, **given)

    def attack(url: str) -> int:
        print(f"server {url}")
        print(table_header())
        idle, results = asyncio.run(
            run_battery(
                url,
                limits,
                only=args.only,
                retry_slow=not args.no_retry,
                on_result=lambda r: print(table_row(r), flush=True),
            )
        )
        failed = [r for r in results if not (r.answered_as_expected and r.healthy_after)]
        slow = [r for r in results if not r.latency_ok]
        print(f"idle p50 of a normal request: {idle * 1e3:.1f} ms")
        print(
            f"{len(results)} attacks: {len(results) - len(failed)} answered as expected, "
            f"{len(slow)} over their latency bound"
        )
        return 1 if failed or slow else 0

    if args.url:
        return attack(args.url.rstrip("/"))
    model_dir = args.model_dir or prepared_dir(args.model, args.variant)
    log = Path(tempfile.mkdtemp(prefix="embench-hostile-")) / "server.log"
    print(f"server log: {log}")
    with running_server(model_dir, limits, log, threads=args.threads) as url:
        return attack(url)


if __name__ == "__main__":
    sys.exit(main())
