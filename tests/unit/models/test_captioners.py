"""Every captioner family through one interface: parity with the plain transformers code, through the
captioner and through the caption, clean and prompts jobs; low-memory loading of a BLIP-2-class model."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.models.captioner import caption_target, load_captioner
from tests.fixtures.reference import FAMILIES, PROMPTS, pngs, reference


def our_pixels(cfg, datas):
    from pipeline.decode.image import decode

    t = caption_target(cfg.caption)
    pixels = [decode(d, (t,), 10**8, ("PNG",), draft=False)[0][t.name] for d in datas]
    return pixels if t.dynamic else np.stack(pixels)  # dynamic: each image its own size


@pytest.mark.parametrize("name", FAMILIES)
def test_parity_greedy_beam_prompt_and_sampling(name, photos):
    datas = pngs(photos)
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]
    common = [f"caption.model=tiny:{name}", "caption.max_new_tokens=6", "caption.min_new_tokens=3", "decode.fast=false"]
    gen = dict(max_new_tokens=6, min_new_tokens=3)
    for extra, ref_kw in [
        (["caption.strategy=greedy"], dict(num_beams=1, do_sample=False)),
        (["caption.strategy=beam", "caption.num_beams=3"], dict(num_beams=3, do_sample=False)),
        (["caption.strategy=greedy", f"caption.prompt={PROMPTS[name]}"], dict(num_beams=1, do_sample=False)),
    ]:
        cfg = load_config(None, common + extra)
        ours = [c[0] for c in load_captioner(cfg.caption).caption(our_pixels(cfg, datas))]
        prompt = cfg.caption.prompt
        assert ours == reference(name, images, prompt, **gen, **ref_kw), (name, extra)
    cfg = load_config(None, common + ["caption.strategy=sample", "caption.num_captions=3", "caption.seed=11"])
    ours = load_captioner(cfg.caption).caption(our_pixels(cfg, datas))
    ref = reference(name, images, seed=11, do_sample=True, top_p=0.9, top_k=0, temperature=1.0,
                    num_return_sequences=3, **gen)
    assert [c for cands in ours for c in cands] == ref
    assert len({c for cands in ours for c in cands}) > 1


@pytest.mark.parametrize("name", ["blip2-opt", "blip2-t5", "vit-gpt2"])
def test_static_kv_cache_writes_the_same_captions(name, photos):
    datas = pngs(photos)
    common = [f"caption.model=tiny:{name}", "caption.max_new_tokens=6", "caption.min_new_tokens=3", "decode.fast=false",
              "caption.strategy=beam", "caption.num_beams=3"]
    dynamic = load_config(None, common)
    static = load_config(None, [*common, "caption.cache=static"])
    captioner = load_captioner(static.caption)
    assert captioner.gen_kwargs["cache_implementation"] == "static"
    pixels = our_pixels(static, datas)
    assert captioner.caption(pixels) == load_captioner(dynamic.caption).caption(pixels)


def test_encoder_decoder_beam_search_leaves_the_cross_attention_cache_in_place(photos, monkeypatch):
    """ViT-GPT2 with beams: the cross-attention cache is never index-copied (its rows are identical
    within an image), the self-attention cache is; the captions are transformers' (the parity test)."""
    from pipeline.models import hf_captioner

    caches = []

    def spied():
        cache = make()
        for part in (cache.self_attention_cache, cache.cross_attention_cache):
            part.reorders = 0
            real = part.reorder_cache

            def counting(beam_idx, part=part, real=real):
                part.reorders += 1
                return real(beam_idx)

            part.reorder_cache = counting
        caches.append(cache)
        return cache

    make = hf_captioner.beam_cache
    monkeypatch.setattr(hf_captioner, "beam_cache", spied)
    datas = pngs(photos)
    cfg = load_config(None, ["caption.model=tiny:vit-gpt2", "caption.strategy=beam", "caption.num_beams=4",
                             "caption.max_new_tokens=6", "caption.min_new_tokens=6", "decode.fast=false"])
    ours = load_captioner(cfg.caption).caption(our_pixels(cfg, datas))
    assert len(caches) == 1
    assert caches[0].self_attention_cache.reorders >= 5 and caches[0].cross_attention_cache.reorders == 0
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]
    assert [c[0] for c in ours] == reference("vit-gpt2", images, num_beams=4, max_new_tokens=6, min_new_tokens=6)


def test_static_kv_cache_is_refused_for_blip_with_a_clear_error():
    cfg = load_config(None, ["caption.model=tiny:blip", "caption.cache=static"])
    with pytest.raises(ValueError, match="caption.cache: 'static' is not supported by BLIP"):
        load_captioner(cfg.caption)


LOAD_PROBE = """
import json, sys
import torch, transformers


def hwm():  # peak RSS of this process (VmHWM: unlike ru_maxrss it does not carry the parent's peak over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

from transformers import AutoProcessor, Blip2ForConditionalGeneration, Blip2Processor  # code, not weights
from pipeline.config import load_config
from pipeline.models.captioner import load_captioner
from pipeline.models import hf_captioner
base = hwm()
cfg = load_config(None, [f"caption.model={sys.argv[1]}", "caption.dtype=float16", "caption.device=cpu"])
cap = load_captioner(cfg.caption)
with torch.no_grad():  # touch every weight: lazily mapped pages must count too
    for p in cap.model.parameters():
        p.sum()
peak = hwm()
params = sum(p.numel() * p.element_size() for p in cap.model.parameters())
print(json.dumps({"base": base, "peak": peak, "param_bytes": params, "dtype": str(cap.model.language_model.dtype)}))
"""


@pytest.mark.slow  # a subprocess loading a 350 MiB model
def test_blip2_class_loads_in_fp16_within_1_5x_its_size(model_cache):
    """A benchmark of loading, not a timed test: peak RSS growth while loading a ~350 MiB (fp16) BLIP-2
    (OPT LM of 12 layers × 1024) and touching every weight, against the weights' own size."""
    from pipeline.models.random_weights import build_blip2

    path = model_cache / "blip2-opt-180m-fp16"
    if not (path / "config.json").exists():
        build_blip2(path, lm="opt", lm_hidden=1024, lm_layers=12, dtype="float16")
    res = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    files = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    growth = m["peak"] - m["base"]
    print(f"BLIP-2 fp16: weights {files / 2**20:.0f} MiB on disk, {m['param_bytes'] / 2**20:.0f} MiB in memory; "
          f"peak RSS growth while loading {growth / 2**20:.0f} MiB = {growth / m['param_bytes']:.2f}× ({m['dtype']})")
    assert m["dtype"] == "torch.float16"
    assert m["param_bytes"] > 300 * 2**20
    assert growth < 1.5 * m["param_bytes"]
