"""capfilt's BLIP attention: the same tokens as transformers' own, the vision tower through SDPA, and
the decoder's cross-attention K/V held once per image (not per beam) outside the cache that beam search
reorders."""

from __future__ import annotations

import pytest

from jobs.clean import JOB as CLEAN
from pipeline.models.blip_attention import SharedCrossAttention, install, sdpa_vision, stock_attention
from pipeline.models.random_weights import ensure_tiny

torch = pytest.importorskip("torch")

GEN = {"max_new_tokens": 12, "min_new_tokens": 4, "return_dict_in_generate": True}


@pytest.fixture(scope="module")
def model():
    from transformers import BlipForConditionalGeneration

    return BlipForConditionalGeneration.from_pretrained(ensure_tiny("blip")).eval()


def pixels(model, n: int, seed: int = 0):
    size = model.config.vision_config.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def generate(model, shared, pv, on: bool, seed: int = 1, **kw):
    torch.manual_seed(seed)
    with torch.inference_mode():
        if not on:
            with stock_attention(model):
                return model.generate(pixel_values=pv, **GEN, **kw)
        with shared.session(len(pv)):
            out = model.generate(pixel_values=pv, **GEN, **kw)
            kv = dict(shared.kv)
        assert not shared.kv  # released with the call
        return out, kv


@pytest.mark.parametrize("kw", [
    {"num_beams": 3},
    {"num_beams": 4, "num_return_sequences": 2},
    {"do_sample": True, "top_p": 0.9, "top_k": 0, "num_return_sequences": 3},
    {"num_beams": 1},
], ids=["beam", "beam-2-returned", "sample", "greedy"])
def test_same_tokens_as_transformers_with_kv_once_per_image(model, kw):
    shared = install(model)
    pv = pixels(model, 6)
    stock = generate(model, shared, pv, False, **kw)
    ours, kv = generate(model, shared, pv, True, **kw)
    assert torch.equal(ours.sequences, stock.sequences)
    assert ours.sequences.shape[0] == 6 * kw.get("num_return_sequences", 1)
    layers = model.config.text_config.num_hidden_layers
    assert sorted(kv) == list(range(layers))
    heads = model.config.text_config.num_attention_heads
    k, v, _, group = kv[0]
    tokens = model.vision_model(pixel_values=pv[:1]).last_hidden_state.shape[1]
    assert k.shape[:3] == v.shape[:3] == (6, heads, tokens)  # one per image, not one per beam or sample
    assert group == kw.get("num_beams", 1) * (kw.get("num_return_sequences", 1) if kw.get("do_sample") else 1)
    # transformers' cache — the one beam search index-copies every step — holds self-attention only
    assert ours.past_key_values.cross_attention_cache.get_seq_length() == 0
    assert stock.past_key_values.cross_attention_cache.get_seq_length() == tokens


def test_outside_a_session_transformers_decoder_runs(model):
    shared = install(model)
    assert install(model) is shared  # installed once
    torch.manual_seed(0)
    with torch.inference_mode():
        out = model.generate(pixel_values=pixels(model, 2), num_beams=3, **GEN)
    assert out.past_key_values.cross_attention_cache.get_seq_length() > 0
    assert not shared.kv


def test_the_vision_tower_through_sdpa_matches_transformers_eager_attention(monkeypatch):
    import torch.nn.functional as F
    from transformers import BlipForImageTextRetrieval

    from pipeline.config import load_config
    from pipeline.models.itm import load_itm

    model = BlipForImageTextRetrieval.from_pretrained(ensure_tiny("blip-itm")).eval()
    layers = model.config.vision_config.num_hidden_layers
    pv = pixels(model, 3, seed=4)
    with torch.inference_mode():
        stock = model.vision_model(pixel_values=pv).last_hidden_state
        assert sdpa_vision(model) == layers
        calls, sdpa = [], F.scaled_dot_product_attention
        monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
        ours = model.vision_model(pixel_values=pv).last_hidden_state
        with stock_attention(model):
            again = model.vision_model(pixel_values=pv).last_hidden_state
    assert len(calls) == layers  # ours ran, one fused call per layer; none under stock_attention
    assert torch.allclose(ours, stock, rtol=1e-4, atol=1e-5 * float(stock.abs().max()))
    assert torch.equal(again, stock)  # stock_attention: transformers' own forward, exactly
    itm = load_itm(load_config(None, ["itm.model=tiny:blip-itm"], defaults=CLEAN.defaults).itm)
    patched = [m for m in itm.model.modules() if type(m).__name__ == "BlipAttention" and "forward" in m.__dict__]
    assert len(patched) == layers  # the ITM scorer runs it too


def test_a_padding_mask_over_image_tokens_equals_dropping_them(model):
    """The mask path (BLIP's captioning passes all ones): masking the last image tokens gives the
    tokens that cutting them off gives."""
    shared = SharedCrossAttention.of(model)
    with torch.inference_mode():
        emb = model.vision_model(pixel_values=pixels(model, 3, seed=2)).last_hidden_state
    keep = emb.shape[1] // 2
    mask = torch.ones(emb.shape[:2], dtype=torch.long)
    mask[:, keep:] = 0
    text = model.config.text_config
    ids = torch.full((3, 1), text.bos_token_id)

    def run(states, attention):
        with torch.inference_mode(), shared.session(3):
            return model.text_decoder.generate(input_ids=ids, encoder_hidden_states=states, encoder_attention_mask=attention,
                                               eos_token_id=text.sep_token_id, pad_token_id=text.pad_token_id,
                                               num_beams=3, max_new_tokens=8, min_new_tokens=8)

    masked, cut, whole = run(emb, mask), run(emb[:, :keep], mask[:, :keep]), run(emb, torch.ones_like(mask))
    assert torch.equal(masked, cut)
    assert not torch.equal(masked, whole)  # the mask did change something


def test_a_session_for_another_number_of_images_is_a_clear_error(model):
    shared = SharedCrossAttention.of(model)
    error = "rows of image embeddings for a session of 4"
    with torch.inference_mode(), shared.session(4), pytest.raises(ValueError, match=error):
        model.generate(pixel_values=pixels(model, 3), num_beams=1, max_new_tokens=3)


def test_a_model_without_cross_attention_is_refused():
    with pytest.raises(ValueError, match="no cross-attention layers"):
        SharedCrossAttention(torch.nn.Linear(2, 2))


def test_itm_projects_image_keys_and_values_once_per_image_not_per_text(photos):
    import numpy as np
    from PIL import Image

    from pipeline.config import load_config
    from pipeline.models.itm import load_itm

    itm = load_itm(load_config(None, ["itm.model=tiny:blip-itm", "itm.device=cpu"], defaults=CLEAN.defaults).itm)
    size = itm.model.config.vision_config.image_size
    pixels = np.stack([np.asarray(Image.fromarray(p).resize((size, size))) for p in photos[:3]])
    texts = [["a cat", "a dog", "a tree"], [], ["a car", "a boat"]]
    seen = []
    key = itm.shared.modules[0].key
    hook = key.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    try:
        itm_scores, itc_scores = itm.score(pixels, texts)
    finally:
        hook.remove()
    assert seen == [3]  # one K/V per image (transformers' path: one per (image, text) pair, 5 here)
    assert [len(x) for x in itm_scores] == [len(x) for x in itc_scores] == [3, 0, 2]
    # the values: test_scorers checks them against the model's own forward, pair by pair
