"""`capfilt prompts` (Kaggle "Stable Diffusion — Image to Prompts"): caption with beam search, embed the
caption with all-MiniLM-L6-v2 (384-d) → captions/ + embeddings/ (`prompt_embedding`); `--submission F.csv`
writes the competition's `imgId_eId,val` file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.caption import CAPTION
from pipeline.config import Config
from pipeline.job import Finished, Flag, JobSpec, ModelStep
from pipeline.schema import CAPTIONS_SCHEMA, PROMPT_EMBEDDING, embeddings_schema
from pipeline.stages.embed import EmbedPrompts

log = logging.getLogger("capfilt")


def tables(cfg: Config) -> dict[str, Any]:
    from pipeline.models.text_embed import text_embed_dim

    dim = text_embed_dim(cfg.text_embed, cfg.storage)
    return {"captions": CAPTIONS_SCHEMA, "embeddings": embeddings_schema({PROMPT_EMBEDDING: dim}, cfg.embed.dtype)}


def finish(run: Finished) -> dict[str, Any]:
    """`--submission F.csv`: the competition's file, from the committed embeddings."""
    path = run.options.get("submission")
    if not path:
        return {}
    from pipeline.io.submission import write_submission

    n = write_submission(run.output, path, run.cfg.storage)
    log.info("submission for %d images → %s", n, path)
    return {"submission": {"path": path, "images": n}}


JOB = JobSpec(
    name="prompts",
    help="caption + all-MiniLM-L6-v2 prompt embeddings (Kaggle image-to-prompts)",
    steps=lambda cfg: [CAPTION, ModelStep(EmbedPrompts, "text_embed", target=None,
                                          options=lambda cfg: {"dtype": cfg.embed.dtype}, uses=("embed",))],
    tables=tables,
    # The Kaggle prompts recipe: beam search with 3 beams.
    defaults={"caption": {"strategy": "beam", "num_beams": 3, "num_captions": 1}},
    finish=finish,
    flags=(Flag("--submission", "write Kaggle's imgId_eId,val file", metavar="FILE.csv"),),
)


if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(["prompts", *sys.argv[1:]], command=True))
