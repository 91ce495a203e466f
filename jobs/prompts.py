"""`capfilt prompts` (Kaggle "Stable Diffusion — Image to Prompts"): caption with beam search, embed the
caption with all-MiniLM-L6-v2 (384-d) → captions/ + embeddings/ (`prompt_embedding`); `--submission F.csv`
writes the competition's `imgId_eId,val` file."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Config
from pipeline.models.captioner import caption_target
from pipeline.models.text_embed import text_embed_dim
from pipeline.run import Job, decode_stage, model_stage
from pipeline.schema import CAPTIONS_SCHEMA, PROMPT_EMBEDDING, embeddings_schema
from pipeline.stages.caption import CaptionImages
from pipeline.stages.embed import EmbedPrompts


def build(cfg: Config) -> Job:
    decode, pixels = decode_stage(cfg, {"caption": caption_target(cfg.caption, cfg.storage)})
    dim = text_embed_dim(cfg.text_embed, cfg.storage)
    return Job(
        name="prompts",
        stages=[
            decode,
            model_stage(CaptionImages, (cfg.caption, pixels["caption"], cfg.storage), cfg.caption),
            model_stage(EmbedPrompts, (cfg.text_embed, cfg.embed.dtype, cfg.storage), cfg.text_embed),
        ],
        tables={"captions": CAPTIONS_SCHEMA,
                "embeddings": embeddings_schema({PROMPT_EMBEDDING: dim}, cfg.embed.dtype)},
        sections=("caption", "text_embed", "embed"),
        models={"caption": cfg.caption.model, "text_embed": cfg.text_embed.model},
    )


if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(["prompts", *sys.argv[1:]]))
