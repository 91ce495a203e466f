"""`capfilt caption`: decode → caption → captions/. Also `python jobs/caption.py ...` for `ray job submit`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (`ray job submit -- python jobs/caption.py ...`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import CaptionConfig
from pipeline.decode.geometry import Target
from pipeline.job import JobSpec, ModelStep
from pipeline.schema import CAPTIONS_SCHEMA
from pipeline.stages.caption import CaptionImages


def caption_target(section: str, cfg: CaptionConfig, storage: dict[str, Any]) -> Target:
    """The captioner's decode size; also refuses a model or setting the captioner cannot run."""
    from pipeline.models.captioner import caption_target

    return caption_target(cfg, storage)


CAPTION = ModelStep(CaptionImages, "caption", target=caption_target)  # the captioning step every job shares

JOB = JobSpec(
    name="caption",
    help="caption every image (BLIP, BLIP-2, ViT-GPT2, LLaVA, Florence-2, Qwen2-VL, SmolVLM)",
    steps=lambda cfg: [CAPTION],
    tables=lambda cfg: {"captions": CAPTIONS_SCHEMA},
)


if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(["caption", *sys.argv[1:]], command=True))
