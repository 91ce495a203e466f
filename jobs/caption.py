"""`capfilt caption`: decode → caption → captions/ table. Also `python jobs/caption.py ...` for ray job submit."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`ray job submit -- python jobs/caption.py ...`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Config
from pipeline.models.captioner import caption_target
from pipeline.run import Job, StageSpec
from pipeline.schema import CAPTIONS_SCHEMA
from pipeline.stages.caption import CaptionImages
from pipeline.stages.decode import DecodeImages


def build(cfg: Config) -> Job:
    c, d = cfg.caption, cfg.decode
    target = caption_target(c, cfg.storage)
    return Job(
        name="caption",
        stages=[
            StageSpec(DecodeImages, (d, (target,)), batch_size=d.batch_size, num_cpus=d.num_cpus,
                      concurrency=d.concurrency),
            StageSpec(CaptionImages, (c, cfg.storage), actor=True, batch_size=c.batch_size, num_cpus=c.num_cpus,
                      num_gpus=c.num_gpus, concurrency=c.concurrency),
        ],
        table="captions",
        schema=CAPTIONS_SCHEMA,
        models={"caption": c.model},
    )


if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(["caption", *sys.argv[1:]]))
