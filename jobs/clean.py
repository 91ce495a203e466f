"""`capfilt clean` (BLIP's CapFilt): caption N candidates, score alt-text and candidates, keep what matches.

decode (once, every model's size) → CaptionImages → ScoreItm and/or ScoreClip (+ embeddings with
`clean.embed`) → SelectCaption → captions/ (and embeddings/); top_fraction sets its flags at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.caption import CAPTION
from pipeline.config import Config
from pipeline.job import CpuStep, Finished, Flag, JobSpec, ModelStep, Step
from pipeline.schema import IMAGE_EMBEDDING, TEXT_EMBEDDING, clean_schema, embeddings_schema, head_fields
from pipeline.stages.score import ScoreClip, ScoreItm
from pipeline.stages.select import SelectCaption


def steps(cfg: Config) -> list[Step]:
    c = cfg.clean
    out: list[Step] = [CAPTION]
    if "itm" in c.scorers:
        out.append(ModelStep(ScoreItm, "itm"))
    heads = bool(cfg.curate.heads)
    if "clip" in c.scorers or c.embed or heads:  # one CLIP forward scores, embeds (clean.embed) and curates
        out.append(ModelStep(ScoreClip, "clip", options=lambda cfg: {"embed": cfg.embed if cfg.clean.embed else None,
                                                                     "curate": cfg.curate,
                                                                     "score": "clip" in cfg.clean.scorers},
                             uses=(*(("embed",) if c.embed else ()), *(("curate",) if heads else ()))))
    out.append(CpuStep(SelectCaption, "clean", options=lambda cfg: {"curate": cfg.curate}))
    return out


def curated_fields(cfg: Config) -> list[Any]:
    """The curation heads' columns, each head checked against the CLIP model first (before Ray starts)."""
    if not cfg.curate.heads:
        return []
    from pipeline.models.clip import clip_dim
    from pipeline.models.heads import check_heads

    check_heads(cfg.curate, clip_dim(cfg.clip, cfg.storage), cfg.clip.model, cfg.storage)
    return head_fields(list(cfg.curate.heads))


def tables(cfg: Config) -> dict[str, Any]:
    from pipeline.models.clip import clip_dim, is_alpha_clip

    alpha = "clip" in cfg.clean.scorers and is_alpha_clip(cfg.clip, cfg.storage)
    out = {"captions": clean_schema(cfg.clean.scorers, regions=alpha, curated=curated_fields(cfg))}
    if cfg.clean.embed:
        d = clip_dim(cfg.clip, cfg.storage)
        out["embeddings"] = embeddings_schema({IMAGE_EMBEDDING: d, **({TEXT_EMBEDDING: d} if cfg.embed.text else {})},
                                              cfg.embed.dtype, regions=is_alpha_clip(cfg.clip, cfg.storage))
    return out


def finish(run: Finished) -> dict[str, Any]:
    """`top_fraction`: the global cut over every committed score, then each shard's flags."""
    c = run.cfg.clean
    if c.mode != "top_fraction":
        return {}
    from pipeline.review.top_fraction import finish_top_fraction

    return finish_top_fraction(run.output, c.fraction, run.digest, run.cfg.storage, run.cfg.output.compression,
                               run.cfg.curate)


def commit_hook(cfg: Config, output: str, digest: str) -> Any:
    """keep_fraction: the threshold calibrated on the first shards decides every shard at its commit."""
    if cfg.clean.mode != "keep_fraction":
        return None
    from pipeline.review.calibration import KeepFraction

    return KeepFraction(cfg.clean, output, digest, cfg.storage, cfg.curate)


JOB = JobSpec(
    name="clean",
    help="CapFilt: caption, score alt-text and candidates (ITM/CLIP), keep what matches",
    steps=steps,
    tables=tables,
    # CapFilt samples several candidates (nucleus, as in the BLIP paper).
    defaults={"caption": {"strategy": "sample", "num_captions": 3}},
    finish=finish,
    commit_hook=commit_hook,
    alt_text=lambda cfg: True,  # CapFilt judges the web alt-text against the image
    flags=(Flag("--embed", "also write CLIP embeddings (same pass)", override="clean.embed=true"),),
)


if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(["clean", *sys.argv[1:]], command=True))
