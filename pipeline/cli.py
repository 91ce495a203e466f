"""The `capfilt` command: `capfilt <job> --input URI... --output URI [--config F] [--set k=v]...`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.config import ConfigError, load_config
from pipeline.job import JobSpec
from pipeline.runner import quiet
from pipeline.runner.progress import fmt_rate
from pipeline.runner.report import Summary, run_defaults
from pipeline.runner.timing import Phases

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
    r = sub.add_parser("retry", help=RETRY_HELP, description=RETRY_HELP)
    r.add_argument("output", metavar="OUT", help="the output folder of an earlier run (local or s3://)")
    r.add_argument("--config", "-c", metavar="FILE",
                   help="YAML for what run.json does not keep: storage options (redacted there), run.* wiring")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a wiring field (batch sizes, resources); output-shaping fields must stay as they were")
    r.add_argument("--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else a local Ray)")
    r.add_argument("--verbose", "-v", action="store_true")
    e = sub.add_parser("estimate", help=ESTIMATE_HELP, description=ESTIMATE_HELP)
    e.add_argument("estimate_job", metavar="JOB", choices=[*sorted(specs), "dedup"],
                   help="the job to estimate: " + ", ".join(specs) + ", or dedup (--input: a finished run's OUT)")
    e.add_argument("--input", "-i", nargs="+", required=True, metavar="URI",
                   help="the whole run's input (dedup: the OUT of a finished run)")
    e.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")
    e.add_argument("--sample", type=int, default=256, metavar="N", help="images to run (default 256)")
    e.add_argument("--actors", type=int, metavar="A", help="project with A actors per model stage (e.g. GPUs)")
    e.add_argument("--cpus", type=float, metavar="C", help="project with C CPUs for read+decode")
    e.add_argument("--json", action="store_true", help="print everything as JSON")
    e.add_argument("--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else a local Ray)")
    e.add_argument("--verbose", "-v", action="store_true")
    dd = sub.add_parser("dedup", help=DEDUP_HELP, description=DEDUP_HELP)
    dd.add_argument("output", metavar="OUT", help="the output folder of a finished run (local or s3://)")
    dd.add_argument("--config", "-c", metavar="FILE", help="YAML: the dedup section, storage options, run.* wiring")
    dd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. dedup.eps=0.03 or dedup.semantic=false (repeatable)")
    dd.add_argument("--address", help="Ray cluster to attach to (default: RAY_ADDRESS, else a local Ray)")
    dd.add_argument("--verbose", "-v", action="store_true")
    c = sub.add_parser("convert", help=CONVERT_HELP, description=CONVERT_HELP)
    c.add_argument("kind", choices=["alpha-clip"], help="what to convert: alpha-clip (a released .pth)")
    c.add_argument("checkpoint", metavar="CKPT", help="the checkpoint file")
    c.add_argument("out_dir", metavar="OUT_DIR", help="the transformers directory to write")
    c.add_argument("--base", required=True, help="the CLIP it was fine-tuned from (HF id, directory or tiny:clip), "
                   "e.g. openai/clip-vit-large-patch14-336: text tower, tokenizer and image processor")
    c.add_argument("--verbose", "-v", action="store_true")
    i = sub.add_parser("inspect", help=INSPECT_HELP, description=INSPECT_HELP)
    i.add_argument("output", metavar="OUT", help="the output folder of a run (local or s3://)")
    i.add_argument("--keep", type=float, metavar="FRACTION",
                   help="the alt-text score threshold that keeps this fraction (0-1) of the scored alt-texts")
    i.add_argument("--json", action="store_true", help="print everything as JSON")
    i.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report (histograms, gallery, "
                   "image × text heatmap, ITM GradCAM maps of rejected alt-texts, curation scores' extremes, duplicate groups) "
                   "to FILE")
    i.add_argument("--config", "-c", metavar="FILE", help="YAML with storage options (S3 endpoint, credentials)")
    i.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. storage.anon=true")
    i.add_argument("--verbose", "-v", action="store_true")
    return p


CONVERT_HELP = ("convert a released Alpha-CLIP checkpoint (OpenAI's key names, conv1_alpha) into a transformers CLIP "
                "directory with a 4-channel patch embedding (research-only weights: see their licence)")

DEDUP_HELP = ("exact (sha256), perceptual (phash) and semantic (SemDeDup on the image embeddings) duplicates among a "
              "finished run's rows → OUT/dedup/: every row once, with duplicate_of, method, similarity and keep")

ESTIMATE_HELP = ("run a job's config on a sample of its input (--sample N images) and project the whole run: "
                 "wall time, img/s per stage, the bottleneck, GPU-hours for --actors A; `estimate dedup --input OUT`: "
                 "dedup on a sample of a finished run's files, projected step by step")

INSPECT_HELP = ("what a run decided: counts by status, keep fractions, score quantiles per scorer, thresholds for "
                "keep fractions, throughput, stage times and provenance; reads markers, footers and a few columns")


RETRY_HELP = ("run the rows whose status is retryable (decode_timeout, model_error, model_oom) of an earlier run "
              "again, with its job, inputs and config (OUT/run.json), and write them back into their shards")


def _retry_args(args: argparse.Namespace, specs: dict[str, JobSpec]) -> tuple[JobSpec, dict[str, Any], list[str], str]:
    """(job, config under the user's --config/--set, inputs) of the run that wrote OUT, from its run.json."""
    import json

    from pipeline.io.storage import get_fs, join

    fs, path = get_fs(join(args.output, "run.json"))
    try:
        run = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        raise ConfigError(f"retry: {args.output!r} holds no run.json: not the output of a capfilt run") from None
    # storage options come from --config / --set (run.json redacts them)
    return specs[run["job"]], run_defaults(run), list(run["inputs"]), run["job"]



def main(argv: Sequence[str] | None = None, *, command: bool | None = None, exiting: bool = False) -> int:
    """`capfilt …`. `command`: this process is the command (its time counts from the process's start, as
    a stopwatch around it would); by default so when the arguments come from the command line (argv None),
    not when a running Python program passes them. `exiting`: the process ends when this returns (entry),
    so a job leaves a running Ray it attached to by that exit (run_job)."""
    phases = Phases(from_process_start=argv is None if command is None else command)  # run.json's `phases`
    specs = job_specs()
    args = parser(specs).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.job == "convert":
        from pipeline.models.alpha_clip import convert
        from pipeline.models.loading import resolve_model

        quiet.apply_switches(args.verbose)  # --base tiny:clip is built on first use
        try:
            out = convert(args.checkpoint, args.out_dir, resolve_model(args.base))
        except (ConfigError, FileNotFoundError, ValueError) as e:
            print(f"capfilt: convert: {e}", file=sys.stderr)
            return 2
        print(f"capfilt convert: Alpha-CLIP → {out} (load it as any CLIP; pixel_values get a 4th, alpha channel)")
        return 0
    overrides = list(args.overrides)
    if args.verbose:
        overrides.append("run.verbose=true")
    if args.job == "inspect":
        return _inspect(args, overrides)
    if args.job == "estimate":
        return _estimate(args, overrides, specs)
    if args.job == "dedup":
        return _dedup(args, overrides)
    if args.address:
        overrides.append(f"run.address={args.address}")
    retry = args.job == "retry"
    options: dict[str, Any] = {}
    from pipeline.io.writer import OutputError
    from pipeline.job import build_job
    from pipeline.runner.run import ShardsFailed, Stopped, run_job

    try:
        if retry:
            spec, defaults, inputs, name = _retry_args(args, specs)
        else:
            spec, inputs, name = specs[args.job], args.input, args.job
            defaults = spec.defaults
            for flag in spec.flags:
                value = getattr(args, flag.dest)
                if flag.override is not None:
                    if value:
                        overrides.append(flag.override)
                else:
                    options[flag.dest] = value
        with phases("config_models"):
            cfg = load_config(args.config, overrides, defaults=defaults)
            quiet.apply_switches(cfg.run.verbose)  # before build_job: it builds tiny models on first use
            # Everything a user can get wrong fails here, in one line with exit 2, before Ray starts: the
            # config, the models (build_job), the inputs and the output (run_job plans before it starts Ray).
            job = build_job(spec, cfg, options)
        summary = run_job(job, inputs, args.output, cfg, retry=retry, phases=phases, exiting=exiting)
    except (ConfigError, OutputError, FileNotFoundError, ValueError) as e:
        print(f"capfilt: {e}", file=sys.stderr)
        return 2
    except ConnectionError as e:  # --address / RAY_ADDRESS: no Ray there, or one that wants a token
        print(f"capfilt: {_ray_unreachable(e)}", file=sys.stderr)
        return 2
    except Stopped as e:
        _print_summary(name, e.summary)
        print(f"capfilt: {e}", file=sys.stderr)
        return Stopped.EXIT_CODE
    except ShardsFailed as e:
        _print_summary(name, e.summary)
        print(f"capfilt: {e}", file=sys.stderr)
        return ShardsFailed.EXIT_CODE
    _print_summary(f"{name} retry" if retry else name, summary)
    return 0


def entry() -> None:
    """The `capfilt` command (and `python -m pipeline`): main(), then out at once. Everything of the run is
    written, closed and reported, and Ray shut down, when main returns; what Python's own teardown would
    add — finalising the modules of pyarrow, Ray and the rest, ~0.35 s on a small job — changes nothing."""
    from pipeline.runner.exits import leave

    leave(main(exiting=True))


def _ray_unreachable(e: ConnectionError) -> str:
    """One line for a Ray that cannot be attached to, with the fix for `ray start`'s token authentication."""
    why = " ".join(str(e).split())[:200]
    causes = " ".join(str(c) for c in (e.__cause__, e.__context__) if c is not None)
    hint = ""
    if "token" in causes.lower() and os.environ.get("RAY_AUTH_MODE", "") != "token":
        hint = ("; the cluster uses token authentication (`ray start`'s default): set RAY_AUTH_MODE=token where "
                "capfilt runs (the token is read from ~/.ray/auth_token or RAY_AUTH_TOKEN)")
    return f"cannot attach to Ray: {why}{hint}"


def _estimate(args: argparse.Namespace, overrides: list[str], specs: dict[str, JobSpec]) -> int:
    import json

    from pipeline.job import build_job
    from pipeline.runner.estimate import estimate, render

    if args.address:
        overrides.append(f"run.address={args.address}")
    try:
        if args.sample < 1:
            raise ConfigError(f"estimate: --sample must be at least 1, got {args.sample}")
        if args.estimate_job == "dedup":
            return _estimate_dedup(args, overrides)
        spec = specs[args.estimate_job]
        cfg = load_config(args.config, overrides, defaults=spec.defaults)
        quiet.apply_switches(cfg.run.verbose)
        job = build_job(spec, cfg)
        result = estimate(job, args.input, cfg, args.sample, args.actors, args.cpus)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"capfilt: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str) if args.json else render(result))
    return 0


def _estimate_dedup(args: argparse.Namespace, overrides: list[str]) -> int:
    """`estimate dedup --input OUT`: errors raise to _estimate's handler."""
    import json

    from pipeline.dedup.estimate import estimate_dedup, render

    if len(args.input) != 1:
        raise ConfigError(f"estimate dedup: --input takes the one OUT of a finished run, got {len(args.input)}")
    cfg = load_config(args.config, overrides)
    quiet.apply_switches(cfg.run.verbose)
    result = estimate_dedup(args.input[0], cfg, args.sample)
    print(json.dumps(result, indent=2, default=str) if args.json else render(result))
    return 0


def _dedup(args: argparse.Namespace, overrides: list[str]) -> int:
    from pipeline.dedup.run import dedup_output

    if args.address:
        overrides.append(f"run.address={args.address}")
    try:
        cfg = load_config(args.config, overrides)
        quiet.apply_switches(cfg.run.verbose)
        s = dedup_output(args.output, cfg)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"capfilt: {e}", file=sys.stderr)
        return 2
    except ConnectionError as e:
        print(f"capfilt: {_ray_unreachable(e)}", file=sys.stderr)
        return 2
    dups = ", ".join(f"{m} {n}" for m, n in s["duplicates"].items()) or "none"
    print(f"capfilt dedup: {s['rows']} rows ({s['ok']} ok): duplicates {dups}; kept {s['kept']} of the {s['run_kept']} "
          f"the run kept, in {s['seconds']:.1f}s → {args.output}/dedup")
    return 0


def _inspect(args: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from pipeline.review.inspection import InspectError, inspect_output, render

    try:
        if args.keep is not None and not 0 < args.keep <= 1:
            raise ConfigError(f"inspect: --keep must be a fraction in (0, 1], got {args.keep}")
        cfg = load_config(args.config, overrides)
        quiet.apply_switches(cfg.run.verbose)  # --html loads the run's scorers and draws with matplotlib
        report = inspect_output(args.output, cfg.storage, keep=args.keep)
    except (ConfigError, InspectError, FileNotFoundError) as e:
        print(f"capfilt: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    if args.html:
        from pipeline.review.html_report import write_html

        made = write_html(report, args.output, args.html, cfg.storage)
        print(f"capfilt inspect: report ({made['images']} images, {made['gallery']} rows in the gallery) → {args.html}",
              file=sys.stderr if args.json else sys.stdout)
    return 0


def _print_summary(job: str, summary: Summary) -> None:
    counts = ", ".join(f"{k}={v}" for k, v in sorted(summary.counts.items())) or "none"
    failed = len(summary.extra.get("failed_shards", {}))
    t = summary.extra.get("timing") or {}
    split = ""
    if all(t.get(k) is not None for k in ("startup_s", "work_s", "shutdown_s")):
        split = f" (start-up {t['startup_s']:.1f}s, work {t['work_s']:.1f}s, shutdown {t['shutdown_s']:.1f}s)"
    steady = f"{fmt_rate(summary.steady_images_per_s)} img/s" if summary.steady_images_per_s is not None else "n/a"
    print(f"capfilt {job}: {summary.rows} rows ({counts}) from {summary.shards_done} shards "
          f"({summary.shards_skipped} already done{f', {failed} failed' if failed else ''}) in {summary.seconds:.1f}s"
          f"{split}, {fmt_rate(summary.images_per_s)} img/s, steady {steady} → {summary.output}")
    totals = summary.extra.get("totals")
    if totals:  # what the output holds over all runs into it (the sum of its markers)
        counts = ", ".join(f"{k}={v}" for k, v in totals["counts"].items()) or "none"
        print(f"capfilt {job}: {summary.output} holds {totals['rows']} rows ({counts}) from {totals['shards_committed']} "
              "committed shards")
    if "submission" in summary.extra:
        s = summary.extra["submission"]
        print(f"capfilt {job}: submission for {s['images']} images → {s['path']}")
