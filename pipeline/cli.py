"""The `capfilt` command: `capfilt <job> --input URI... --output URI [--config F] [--set k=v]...`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pipeline.config import ConfigError, load_config
from pipeline.progress import fmt_rate

JOBS = {
    "caption": ("jobs.caption", "caption every image (BLIP, BLIP-2, ViT-GPT2)"),
    "clean": ("jobs.clean", "CapFilt: caption, score alt-text and candidates (ITM/CLIP), keep what matches"),
    "embed": ("jobs.embed", "CLIP image embeddings (and alt-text embeddings)"),
    "prompts": ("jobs.prompts", "caption + all-MiniLM-L6-v2 prompt embeddings (Kaggle image-to-prompts)"),
}

log = logging.getLogger("capfilt")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="capfilt", description="Caption, score, filter and embed image shards on Ray Data.")
    sub = p.add_subparsers(dest="job", required=True, metavar="JOB")
    for name, (_, help_) in JOBS.items():
        j = sub.add_parser(name, help=help_, description=help_)
        j.add_argument("--input", "-i", nargs="+", required=True, metavar="URI",
                       help="shards: paths, globs, {00000..00099} braces, s3://")
        j.add_argument("--output", "-o", required=True, metavar="URI", help="output folder (local or s3://)")
        j.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)")
        j.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. caption.batch_size=32 (repeatable)")
        j.add_argument("--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else a local Ray)")
        j.add_argument("--verbose", "-v", action="store_true")
        if name == "clean":
            j.add_argument("--embed", action="store_true", help="also write CLIP embeddings (same pass)")
        if name == "prompts":
            j.add_argument("--submission", metavar="FILE.csv", help="write Kaggle's imgId_eId,val file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"run.address={args.address}")
    if getattr(args, "embed", False):
        overrides.append("clean.embed=true")
    try:
        cfg = load_config(args.config, overrides, job=args.job)
    except ConfigError as e:
        print(f"capfilt: {e}", file=sys.stderr)
        return 2
    from pipeline.run import run_job

    job_module = importlib.import_module(JOBS[args.job][0])
    try:
        job = job_module.build(cfg)
        summary = run_job(job, args.input, args.output, cfg)
        if getattr(args, "submission", None):
            from pipeline.io.submission import write_submission

            n = write_submission(args.output, args.submission, cfg.storage)
            print(f"capfilt prompts: submission for {n} images → {args.submission}")
    except (FileNotFoundError, ValueError) as e:
        print(f"capfilt: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k}={v}" for k, v in sorted(summary.counts.items())) or "none"
    print(f"capfilt {args.job}: {summary.rows} rows ({counts}) from {summary.shards_done} shards "
          f"({summary.shards_skipped} already done) in {summary.seconds:.1f}s, {fmt_rate(summary.images_per_s)} img/s "
          f"→ {summary.output}")
    return 0
