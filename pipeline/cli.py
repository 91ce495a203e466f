"""The `capfilt` command: `capfilt <job> --input URI... --output URI [--config F] [--set k=v]...`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pipeline.config import ConfigError, load_config

JOBS = {"caption": "jobs.caption"}

log = logging.getLogger("capfilt")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="capfilt", description="Caption, score, filter and embed image shards on Ray Data.")
    sub = p.add_subparsers(dest="job", required=True, metavar="JOB")
    for name, help_ in [("caption", "caption every image (BLIP)")]:
        j = sub.add_parser(name, help=help_)
        j.add_argument("--input", "-i", nargs="+", required=True, metavar="URI",
                       help="shards: paths, globs, {00000..00099} braces, s3://")
        j.add_argument("--output", "-o", required=True, metavar="URI", help="output folder (local or s3://)")
        j.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)")
        j.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. caption.batch_size=32 (repeatable)")
        j.add_argument("--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else a local Ray)")
        j.add_argument("--verbose", "-v", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"run.address={args.address}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"capfilt: {e}", file=sys.stderr)
        return 2
    from pipeline.run import run_job

    job_module = importlib.import_module(JOBS[args.job])
    try:
        job = job_module.build(cfg)
        summary = run_job(job, args.input, args.output, cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"capfilt: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k}={v}" for k, v in sorted(summary.counts.items())) or "none"
    print(f"capfilt {args.job}: {summary.rows} rows ({counts}) from {summary.shards_done} shards "
          f"({summary.shards_skipped} already done) in {summary.seconds:.1f}s, {summary.images_per_s:.1f} img/s "
          f"→ {summary.output}")
    return 0
