"""`capfilt caption`: decode → caption → captions/. Also `python jobs/caption.py ...` for `ray job submit`."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`ray job submit -- python jobs/caption.py ...`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Config
from pipeline.models.captioner import caption_target
from pipeline.run import Job, decode_stage, model_stage
from pipeline.schema import CAPTIONS_SCHEMA
from pipeline.stages.caption import CaptionImages


def build(cfg: Config) -> Job:
    decode, pixels = decode_stage(cfg, {"caption": caption_target(cfg.caption, cfg.storage)})
    return Job(
        name="caption",
        stages=[decode, model_stage(CaptionImages, (cfg.caption, pixels["caption"], cfg.storage), cfg.caption)],
        tables={"captions": CAPTIONS_SCHEMA},
        sections=("caption",),
        models={"caption": cfg.caption.model},
    )


if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(["caption", *sys.argv[1:]]))
