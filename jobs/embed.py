"""`capfilt embed`: CLIP image embeddings of every ok row, and of its alt-text → embeddings/."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Config
from pipeline.job import JobSpec, ModelStep
from pipeline.schema import IMAGE_EMBEDDING, TEXT_EMBEDDING, embeddings_schema, head_fields
from pipeline.stages.embed import EmbedImages
from pipeline.stages.score import thresholded


def tables(cfg: Config) -> dict[str, Any]:
    from pipeline.models.clip import clip_dim, is_alpha_clip
    from pipeline.models.heads import check_heads

    d = clip_dim(cfg.clip, cfg.storage)
    dims = {IMAGE_EMBEDDING: d, **({TEXT_EMBEDDING: d} if cfg.embed.text else {})}
    check_heads(cfg.curate, d, cfg.clip.model, cfg.storage)  # before Ray: a head that does not fit is a config error
    curated = head_fields(list(cfg.curate.heads), keep=thresholded(cfg.curate))
    return {"embeddings": embeddings_schema(dims, cfg.embed.dtype, with_status=True,
                                            regions=is_alpha_clip(cfg.clip, cfg.storage), curated=curated)}


JOB = JobSpec(
    name="embed",
    help="CLIP image embeddings (and alt-text embeddings)",
    steps=lambda cfg: [ModelStep(EmbedImages, "clip", options=lambda cfg: {"embed": cfg.embed, "curate": cfg.curate},
                                 uses=("embed", *(("curate",) if cfg.curate.heads else ())))],
    tables=tables,
    alt_text=lambda cfg: cfg.embed.text,
)


if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(["embed", *sys.argv[1:]], command=True))
