"""The job vocabulary: a job's models, digest sections and resources follow from its step list."""

from __future__ import annotations

from jobs.clean import JOB as CLEAN
from jobs.embed import JOB as EMBED
from jobs.prompts import JOB as PROMPTS
from pipeline.config import load_config
from pipeline.job import build_job
from pipeline.stages.caption import CaptionImages
from pipeline.stages.decode import DecodeImages
from pipeline.stages.score import ScoreClip, ScoreItm
from pipeline.stages.select import SelectCaption
from tests.fixtures.paths import CONFIGS


def test_clean_follows_its_stage_list():
    cfg = load_config(CONFIGS / "tiny-clean.yaml", ["clean.scorers=[itm, clip]", "clean.embed=true",
                                                     "itm.num_cpus=0.5", "clip.concurrency=2"], defaults=CLEAN.defaults)
    job = build_job(CLEAN, cfg)
    assert [s.fn for s in job.stages] == [DecodeImages, CaptionImages, ScoreItm, ScoreClip, SelectCaption]
    assert set(job.sections) == {"caption", "itm", "clip", "embed", "clean"}
    assert job.models == {"caption": cfg.caption.model, "itm": cfg.itm.model, "clip": cfg.clip.model}
    assert set(job.revisions) == {"caption", "itm", "clip"} and all(job.revisions.values())
    itm, clip = job.stages[2], job.stages[3]
    assert itm.actor and itm.num_cpus == 0.5 and itm.batch_size == cfg.itm.batch_size
    assert clip.concurrency == 2 and clip.kwargs == {"embed": cfg.embed}
    assert set(job.tables) == {"captions", "embeddings"}
    # the decode stage decodes once for every model, each at its processor's size
    targets = job.stages[0].args[1]
    assert {t.name for t in targets} == {itm.args[1], clip.args[1], job.stages[1].args[1]}


def test_clean_without_clip_has_no_clip_stage_and_no_clip_section():
    cfg = load_config(CONFIGS / "tiny-clean.yaml", ["clean.scorers=[itm]"], defaults=CLEAN.defaults)
    job = build_job(CLEAN, cfg)
    assert ScoreClip not in [s.fn for s in job.stages]
    assert "clip" not in job.sections and "clip" not in job.models and "embed" not in job.sections


def test_the_digest_sections_are_todays():
    """Outputs written before the redesign resume: each job's digest covers the same sections."""
    embed = build_job(EMBED, load_config(CONFIGS / "tiny-embed.yaml"))
    prompts = build_job(PROMPTS, load_config(CONFIGS / "tiny-prompts.yaml", defaults=PROMPTS.defaults))
    assert set(embed.sections) == {"clip", "embed"}
    assert set(prompts.sections) == {"caption", "text_embed", "embed"}
    assert prompts.stages[2].args[1] is None  # the prompt embedder reads no pixels
