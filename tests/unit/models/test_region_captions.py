"""Region captions: Florence-2's region prompts (location tokens as its processor encodes them) and LLaVA
with an Alpha-CLIP vision tower (the region as the alpha channel), each equal to plain `generate`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.decode.image import decode
from pipeline.decode.regions import box_map
from pipeline.models.captioner import caption_target, load_captioner
from pipeline.models.random_weights import ensure_tiny
from pipeline.models.vlm import REGION_TASK, location_tokens
from tests.fixtures.reference import png

GEN = ["caption.max_new_tokens=6", "caption.min_new_tokens=3", "caption.strategy=beam", "caption.num_beams=2"]


def pixels_of(cfg, arrays):
    t = caption_target(cfg.caption)
    return t, np.stack([decode(png(a), (t,), 10**8, ("PNG",), draft=False)[0][t.name] for a in arrays])


def test_florence2_location_tokens_are_the_processors_own_encoding():
    cap = load_captioner(load_config(None, ["caption.model=tiny:florence2"]).caption)
    proc = cap.processor
    assert location_tokens(proc, [0, 0, 640, 480], (640, 480)) == "<loc_0><loc_0><loc_999><loc_999>"
    assert location_tokens(proc, [320, 120, 321, 240], (640, 480)) == "<loc_500><loc_250><loc_501><loc_500>"
    box, size = [37.5, 80.0, 300.25, 479.0], (640, 480)
    tokens = location_tokens(proc, box, size)
    ids = proc(images=[np.zeros((64, 64, 3), np.uint8)], text=[REGION_TASK + tokens], return_tensors="pt")["input_ids"][0]
    loc_ids = [i for i in ids.tolist() if proc.tokenizer.convert_ids_to_tokens(i).startswith("<loc_")]
    assert proc.tokenizer.convert_ids_to_tokens(loc_ids) == [f"<{t}>" for t in tokens.strip("<>").split("><")]
    bins = [int(t.split("_")[1]) for t in tokens.strip("<>").split("><")]
    back = proc.post_processor.dequantize(torch.tensor([bins]), size)[0]  # the bin's centre, truncated to int
    assert np.abs(back.numpy() - np.array(box)).max() <= max(size) / 1000 + 1


def test_florence2_region_captions_equal_generate_on_the_region_prompt(photos):
    cfg = load_config(None, ["caption.model=tiny:florence2", *GEN])
    cap = load_captioner(cfg.caption)
    _, pixels = pixels_of(cfg, photos[:2])
    regions = [([[0, 0, 100, 80], [50, 60, 200, 150]], None, (256, 256)), ([[10, 10, 20, 20]], None, (256, 256))]
    ours = cap.caption_regions(pixels, regions)
    texts = [REGION_TASK + location_tokens(cap.processor, b, s) for boxes, _, s in regions for b in boxes]
    images = [pixels[0], pixels[0], pixels[1]]
    inputs = cap.processor(images=images, text=texts, return_tensors="pt")
    out = cap.model.generate(**inputs, max_new_tokens=6, min_new_tokens=3, num_beams=2, do_sample=False)
    ref = [t.strip() for t in cap.processor.batch_decode(out, skip_special_tokens=True)]
    assert ours == [ref[:2], ref[2:]]
    assert len(set(ref)) > 1


@pytest.fixture(scope="module")
def llava_alpha():
    cfg = load_config(None, ["caption.model=tiny:llava", f"caption.vision_tower={ensure_tiny('alpha-clip')}", *GEN])
    return cfg, load_captioner(cfg.caption)


def test_llava_with_an_alpha_clip_tower_captions_the_region_it_is_shown(llava_alpha, photos):
    """The region is the tower's alpha channel: captions equal plain generate with that 4-channel input,
    and change when the region does."""
    from pipeline.models.alpha_clip import with_alpha

    cfg, cap = llava_alpha
    assert cap.alpha and cap.regions and cap.model.model.vision_tower.config.num_channels == 4
    t, pixels = pixels_of(cfg, photos[:1])
    boxes = [[0, 0, 40, 40], [180, 180, 256, 256], [0, 0, 256, 256]]
    maps = np.stack([box_map(tuple(b), 256, 256, t) for b in boxes])
    ours = cap.caption_regions(pixels, [(boxes, maps, (256, 256))])[0]
    inputs = cap.inputs(np.repeat(pixels, 3, axis=0))
    pv = with_alpha(inputs["pixel_values"], torch.from_numpy(maps).float() / 255)
    out = cap.model.generate(**{**inputs, "pixel_values": pv}, max_new_tokens=6, min_new_tokens=3, num_beams=2,
                             do_sample=False)
    ref = [t.strip() for t in cap.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    assert ours == ref
    assert ours[0] != ours[1]  # another region, another caption
    whole = cap.caption(pixels)[0][0]
    assert whole == ours[2]  # the whole image as a box = the all-ones alpha of plain captioning


def test_a_vision_tower_that_does_not_fit_is_a_config_error():
    from pipeline.config import ConfigError

    tower = f"caption.vision_tower={ensure_tiny('alpha-clip')}"
    with pytest.raises(ConfigError, match=r"^config: caption.vision_tower: only LLaVA"):
        load_captioner(load_config(None, ["caption.model=tiny:blip", tower]).caption)
    with pytest.raises(ConfigError, match=r"^config: caption.vision_tower: .* does not fit"):
        load_captioner(load_config(None, ["caption.model=tiny:llava", f"caption.vision_tower={ensure_tiny('clip')}"]).caption)
