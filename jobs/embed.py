"""`capfilt embed`: CLIP image embeddings of every ok row, and of its alt-text → embeddings/."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Config
from pipeline.models.clip import clip_dim
from pipeline.models.loading import image_target
from pipeline.run import Job, decode_stage, model_stage
from pipeline.schema import IMAGE_EMBEDDING, TEXT_EMBEDDING, embeddings_schema
from pipeline.stages.score import EmbedImages


def build(cfg: Config) -> Job:
    decode, pixels = decode_stage(cfg, {"clip": image_target(cfg.clip, "clip", cfg.storage)})
    d = clip_dim(cfg.clip, cfg.storage)
    dims = {IMAGE_EMBEDDING: d, **({TEXT_EMBEDDING: d} if cfg.embed.text else {})}
    return Job(
        name="embed",
        stages=[decode, model_stage(EmbedImages, (cfg.clip, pixels["clip"], cfg.embed, cfg.storage), cfg.clip)],
        tables={"embeddings": embeddings_schema(dims, cfg.embed.dtype, with_status=True)},
        sections=("clip", "embed"),
        models={"clip": cfg.clip.model},
    )


if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(["embed", *sys.argv[1:]]))
