"""Warm model actors are found by name (ray_adapter.warm_names): equal stages share them, and anything
that shapes a stage's output gives other ones."""

from pipeline.config import load_config
from pipeline.job import StageSpec
from pipeline.runner.ray_adapter import warm_names
from pipeline.stages.caption import CaptionImages
from tests.fixtures.paths import TINY


def test_warm_actors_are_named_by_everything_that_shapes_their_output():
    cfg = load_config(TINY)

    def spec(c=cfg.caption, batch_size=16):
        return StageSpec(CaptionImages, (c, "pixels_caption", {}), actor=True, batch_size=batch_size)

    [base] = warm_names(spec(), None)
    assert [base] == warm_names(spec(), None) and base.startswith("capfilt-CaptionImages-")
    assert base not in warm_names(spec(batch_size=8), None)
    assert base not in warm_names(spec(load_config(TINY, ["caption.num_beams=2"]).caption), None)
    assert base not in warm_names(spec(), ["key", "caption"])
    two = warm_names(StageSpec(CaptionImages, (cfg.caption, "pixels_caption", {}), actor=True, batch_size=16,
                               concurrency=2), None)
    assert two[0] == base and len(set(two)) == 2  # a run with two reuses the one, and adds a second
