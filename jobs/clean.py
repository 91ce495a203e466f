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

from pipeline.config import Config
from pipeline.image import Target
from pipeline.models.captioner import caption_target
from pipeline.models.clip import clip_dim
from pipeline.models.loading import image_target
from pipeline.run import Job, StageSpec, decode_stage, model_stage
from pipeline.schema import IMAGE_EMBEDDING, TEXT_EMBEDDING, clean_schema, embeddings_schema
from pipeline.select import finish_top_fraction
from pipeline.stages.caption import CaptionImages
from pipeline.stages.score import ScoreClip, ScoreItm
from pipeline.stages.select import SelectCaption


def build(cfg: Config) -> Job:
    c = cfg.clean
    use_clip = "clip" in c.scorers or c.embed
    targets: dict[str, Target] = {"caption": caption_target(cfg.caption, cfg.storage)}
    if "itm" in c.scorers:
        targets["itm"] = image_target(cfg.itm, "itm", cfg.storage)
    if use_clip:
        targets["clip"] = image_target(cfg.clip, "clip", cfg.storage)
    decode, pixels = decode_stage(cfg, targets)
    stages = [decode, model_stage(CaptionImages, (cfg.caption, pixels["caption"], cfg.storage), cfg.caption)]
    if "itm" in c.scorers:
        stages.append(model_stage(ScoreItm, (cfg.itm, pixels["itm"], cfg.storage), cfg.itm))
    if use_clip:
        embed = cfg.embed if c.embed else None
        stages.append(model_stage(ScoreClip, (cfg.clip, pixels["clip"], embed, cfg.storage), cfg.clip))
    stages.append(StageSpec(SelectCaption, (c,), batch_size=256, num_cpus=0.25))
    tables = {"captions": clean_schema(c.scorers)}
    if c.embed:
        d = clip_dim(cfg.clip, cfg.storage)
        dims = {IMAGE_EMBEDDING: d, **({TEXT_EMBEDDING: d} if cfg.embed.text else {})}
        tables["embeddings"] = embeddings_schema(dims, cfg.embed.dtype)
    models = {"caption": cfg.caption.model, **({"itm": cfg.itm.model} if "itm" in c.scorers else {}),
              **({"clip": cfg.clip.model} if use_clip else {})}
    sections = ("caption", "clean", *(["itm"] if "itm" in c.scorers else []),
                *(["clip"] if use_clip else []), *(["embed"] if c.embed else []))

    def finish(cfg: Config, output: str) -> dict[str, Any]:
        if c.mode != "top_fraction":
            return {}
        return finish_top_fraction(output, c.fraction, cfg.digest(sections), cfg.storage, cfg.output.compression)

    return Job(name="clean", stages=stages, tables=tables, sections=sections, models=models, finish=finish)


if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main(["clean", *sys.argv[1:]]))
