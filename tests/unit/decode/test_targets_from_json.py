"""The driver reads a model's decode target from its processor's saved JSON (no transformers, no torch):
the same target transformers' loaded processor gives, for every family's processor; and the files
whose meaning depends on class defaults go to transformers."""

import json
import shutil

import pytest

from pipeline.config import CaptionConfig
from pipeline.decode.targets import json_image_processor, processor_size_target
from pipeline.models.loading import image_processor_json, processor_target
from pipeline.models.random_weights import ensure_tiny

FAMILIES = ["blip", "blip2-opt", "blip2-t5", "vit-gpt2", "blip-itm", "clip", "alpha-clip", "llava", "florence2",
            "qwen2-vl", "smolvlm"]


def transformers_target(path, name="p"):
    from transformers import AutoImageProcessor

    return processor_size_target(AutoImageProcessor.from_pretrained(path), name)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_json_target_of_every_familys_processor_is_transformers_own(name):
    path = str(ensure_tiny(name))
    saved = image_processor_json(path, CaptionConfig(model=path))
    view = json_image_processor(saved)
    assert view is not None, f"{name}: its saved processor should not need transformers"
    assert processor_size_target(view, "p") == transformers_target(path)


def _with_processor(tmp_path, name, edit):
    """tiny:<name> with its image processor's JSON rewritten by `edit` (as a released model saves it)."""
    out = tmp_path / name
    shutil.copytree(ensure_tiny(name), out)
    nested = out / "processor_config.json"
    if nested.exists():
        d = json.loads(nested.read_text())
        proc = d.pop("image_processor")
        nested.write_text(json.dumps(d))
    else:
        proc = json.loads((out / "preprocessor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps(edit(proc)))
    return str(out)


def qwen_released(p):  # Qwen2-VL-2B-Instruct's file: min/max pixels, no size
    p = {k: v for k, v in p.items() if k != "size"}
    return {**p, "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 20}


def clip_ints(p):  # openai/clip-vit-*'s file: int sizes
    return {**p, "size": 48, "crop_size": 40}


def blip_no_size(p):  # no size written: the class default (384)
    return {k: v for k, v in p.items() if k != "size"}


@pytest.mark.parametrize(("name", "edit", "from_json"), [
    ("qwen2-vl", qwen_released, True),
    ("clip", clip_ints, False),
    ("blip", blip_no_size, False),
    ("clip", lambda p: {k: v for k, v in p.items() if k != "do_center_crop"}, False),
    ("clip", lambda p: {**p, "image_processor_type": "SiglipImageProcessor"}, False),
], ids=["qwen2-vl-released", "clip-int-sizes", "blip-default-size", "clip-default-crop", "unknown-class"])
def test_released_file_forms_give_transformers_target_with_or_without_it(tmp_path, name, edit, from_json):
    path = _with_processor(tmp_path, name, edit)
    view = json_image_processor(image_processor_json(path, CaptionConfig(model=path)))
    assert (view is not None) == from_json
    cfg = CaptionConfig(model=path)
    assert processor_target(path, cfg, "p") == transformers_target(path)
