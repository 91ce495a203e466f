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
    assert clip.concurrency == 2 and clip.kwargs == {"embed": cfg.embed, "curate": cfg.curate, "score": True}
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


def test_a_gpu_model_stage_without_concurrency_autoscales_up_to_the_clusters_gpus():
    from pipeline.runner.ray_adapter import pool

    def stages(*overrides: str, gpus: float) -> dict[str, tuple[int, int]]:
        cfg = load_config(str(CONFIGS / "tiny-clean.yaml"), list(overrides), defaults=CLEAN.defaults)
        job = build_job(CLEAN, cfg).with_cluster_gpus(gpus)
        return {s.fn.__name__: (pool(s).min_size, pool(s).max_size) for s in job.stages if s.actor}

    # on CPUs: one actor each, whatever the cluster
    assert set(stages(gpus=8).values()) == {(1, 1)}
    # three models packed on a GPU (0.4 + 0.3 + 0.3): one of each per GPU
    packed = ["caption.num_gpus=0.4", "itm.num_gpus=0.3", "clip.num_gpus=0.3"]
    assert stages(*packed, gpus=8) == {"CaptionImages": (1, 8), "ScoreItm": (1, 8), "ScoreClip": (1, 8)}
    assert stages(*packed, gpus=1) == {"CaptionImages": (1, 1), "ScoreItm": (1, 1), "ScoreClip": (1, 1)}
    assert stages(*packed, gpus=0) == {"CaptionImages": (1, 1), "ScoreItm": (1, 1), "ScoreClip": (1, 1)}
    # a fixed concurrency wins
    assert stages(*packed, "caption.concurrency=2", gpus=8)["CaptionImages"] == (2, 2)
