"""The `capfilt` command: `capfilt <job> --input URI... --output URI [--config F] [--set k=v]...`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pipeline.config import ConfigError, load_config
from pipeline.job import JobSpec
from pipeline.progress import fmt_rate
from pipeline.report import Summary

JOB_MODULES = ("jobs.caption", "jobs.clean", "jobs.embed", "jobs.prompts")

log = logging.getLogger("capfilt")


def job_specs() -> dict[str, JobSpec]:
    """Every job, by name, as its module in jobs/ declares it."""
    specs = [importlib.import_module(m).JOB for m in JOB_MODULES]
    return {s.name: s for s in specs}


def parser(specs: dict[str, JobSpec]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="capfilt", description="Caption, score, filter and embed image shards on Ray Data.")
    sub = p.add_subparsers(dest="job", required=True, metavar="JOB")
    for name, spec in specs.items():
        j = sub.add_parser(name, help=spec.help, description=spec.help)
        j.add_argument("--input", "-i", nargs="+", required=True, metavar="URI",
                       help="shards: paths, globs, {00000..00099} braces, s3://")
        j.add_argument("--output", "-o", required=True, metavar="URI", help="output folder (local or s3://)")
        j.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)")
        j.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. caption.batch_size=32 (repeatable)")
        j.add_argument("--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else a local Ray)")
        j.add_argument("--verbose", "-v", action="store_true")
        for flag in spec.flags:
            if flag.override is not None:
                j.add_argument(flag.name, dest=flag.dest, action="store_true", help=flag.help)
            else:
                j.add_argument(flag.name, dest=flag.dest, metavar=flag.metavar, help=flag.help)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    specs = job_specs()
    args = parser(specs).parse_args(argv)
    spec = specs[args.job]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"run.address={args.address}")
    options = {}
    for flag in spec.flags:
        value = getattr(args, flag.dest)
        if flag.override is not None:
            if value:
                overrides.append(flag.override)
        else:
            options[flag.dest] = value
    from pipeline.io.writer import OutputError
    from pipeline.job import build_job
    from pipeline.run import ShardsFailed, Stopped, run_job

    try:
        cfg = load_config(args.config, overrides, defaults=spec.defaults)
        # Everything a user can get wrong fails here, in one line with exit 2, before Ray starts: the
        # config, the models (build_job), the inputs and the output (run_job plans before it starts Ray).
        job = build_job(spec, cfg, options)
        summary = run_job(job, args.input, args.output, cfg)
    except (ConfigError, OutputError, FileNotFoundError, ValueError) as e:
        print(f"capfilt: {e}", file=sys.stderr)
        return 2
    except Stopped as e:
        _print_summary(args.job, e.summary)
        print(f"capfilt: {e}", file=sys.stderr)
        return Stopped.EXIT_CODE
    except ShardsFailed as e:
        _print_summary(args.job, e.summary)
        print(f"capfilt: {e}", file=sys.stderr)
        return ShardsFailed.EXIT_CODE
    _print_summary(args.job, summary)
    return 0


def _print_summary(job: str, summary: Summary) -> None:
    counts = ", ".join(f"{k}={v}" for k, v in sorted(summary.counts.items())) or "none"
    failed = len(summary.extra.get("failed_shards", {}))
    print(f"capfilt {job}: {summary.rows} rows ({counts}) from {summary.shards_done} shards "
          f"({summary.shards_skipped} already done{f', {failed} failed' if failed else ''}) in {summary.seconds:.1f}s, "
          f"{fmt_rate(summary.images_per_s)} img/s → {summary.output}")
    totals = summary.extra.get("totals")
    if totals and summary.shards_skipped:  # a resumed run: what the output holds over all runs
        counts = ", ".join(f"{k}={v}" for k, v in totals["counts"].items()) or "none"
        print(f"capfilt {job}: {summary.output} holds {totals['rows']} rows ({counts}) from {totals['shards_committed']} "
              "committed shards")
    if "submission" in summary.extra:
        s = summary.extra["submission"]
        print(f"capfilt {job}: submission for {s['images']} images → {s['path']}")
