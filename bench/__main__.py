"""Benchmarks, side by side in one run: `python -m bench` (make bench) / `--device cuda` (make bench-gpu)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.cpu import CPU_PARTS, EXTRA_PARTS, cpu_suite
from bench.gpu import DEFAULT_E2E, E2E, GPU_BATCHES, e2e_suite, gpu_suite
from bench.meters import environment
from bench.report import E2E_HEADER, cpu_table

log = logging.getLogger("capfilt.bench")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu: the side-by-side CPU suite; cuda: full-size GPU configs")
    p.add_argument("--tiny", action="store_true", help="GPU suite with tiny configs (to test it on a CPU)")
    p.add_argument("--gpu-suite", action="store_true", help="run the GPU suite even with --device cpu")
    p.add_argument("--quick", action="store_true", help="fewer images and seconds (a smoke run)")
    p.add_argument("--seconds", type=float, default=20.0, help="GPU suite: seconds per model")
    p.add_argument("--batch-size", default=None,
                   help="GPU suite, model only: images per batch, comma-separated (default: "
                        + "; ".join(f"{k} {','.join(map(str, v))}" for k, v in GPU_BATCHES.items()) + ")")
    p.add_argument("--compile", action="store_true", help="GPU suite, model only: also CLIP with torch.compile")
    p.add_argument("--no-e2e", action="store_true", help="GPU suite: model-only figures, no end-to-end jobs")
    p.add_argument("--no-model-only", action="store_true", help="GPU suite: end-to-end jobs only")
    p.add_argument("--e2e", default=None,
                   help=f"GPU suite: end-to-end entries, comma-separated, run in that order (default: {','.join(DEFAULT_E2E)}; "
                        f"also: {','.join(n for n in E2E if n not in DEFAULT_E2E)})")
    p.add_argument("--e2e-variant", action="append", default=[], metavar="NAME:key=value[,key=value]",
                   help="GPU suite: run entry NAME again with these config overrides, side by side (repeatable)")
    p.add_argument("--e2e-scale", type=float, default=1.0, help="GPU suite: × the end-to-end image counts")
    p.add_argument("--only", default=",".join(CPU_PARTS),
                   help=f"CPU suite: the parts to run, comma-separated (default: all of {','.join(CPU_PARTS)})")
    p.add_argument("--out", default="bench-out/bench.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"environment": environment(args.device)}

    def save(part: str | None = None, figures: dict[str, Any] | None = None) -> None:
        """After every figure: a run cut off by a time limit keeps what it measured."""
        if part is not None:
            result[part] = figures
        out.write_text(json.dumps(result, indent=2, default=str))

    if args.device == "cuda" or args.gpu_suite:
        if not args.no_model_only:
            print("| model | img/s (model only) | batch | dtype | GPU busy |\n|---|---|---|---|---|", flush=True)
            batches = tuple(int(b) for b in args.batch_size.split(",")) if args.batch_size else None
            result["gpu"] = gpu_suite(args.device, args.tiny, 2.0 if args.quick else args.seconds, batches, args.compile,
                                      lambda r: save("gpu", r))
        import importlib.util

        if not args.no_e2e and importlib.util.find_spec("ray") is None:
            print("end to end: skipped, Ray is not importable here (on an offline GPU box: `make devicepack`, "
                  "then PYTHONPATH=<unpacked site>; see BENCHMARKS.md)")
        elif not args.no_e2e:
            names = tuple(n.strip() for n in args.e2e.split(",")) if args.e2e else None
            if names and (unknown := sorted(set(names) - set(E2E))):
                p.error(f"--e2e: unknown entr(ies) {', '.join(unknown)}; choose from {', '.join(E2E)}")
            print(E2E_HEADER, flush=True)

            with tempfile.TemporaryDirectory(prefix="capfilt-bench-") as work:
                result["e2e"] = e2e_suite(args.device, args.tiny, args.e2e_scale, Path(work), names,
                                          tuple(args.e2e_variant),
                                          lambda r: save("e2e", r))
    else:
        with tempfile.TemporaryDirectory(prefix="capfilt-bench-") as work:
            parts = tuple(p.strip() for p in args.only.split(",") if p.strip())
            unknown = sorted(set(parts) - set(CPU_PARTS + EXTRA_PARTS))
            if unknown:
                p.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(CPU_PARTS + EXTRA_PARTS)}")
            result["cpu"] = cpu_suite(args.quick, Path(work), parts)
        print(cpu_table(result["cpu"]))
    save()
    print(f"wrote {out}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
