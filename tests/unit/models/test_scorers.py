"""Fidelity of the scorers and embedders vs the plain transformers / sentence-transformers code."""

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.decode.image import decode
from pipeline.models.clip import load_clip
from pipeline.models.itm import load_itm
from pipeline.models.loading import image_target
from pipeline.models.text_embed import load_text_embedder

TEXTS = [["a woman in a space suit", "a cat"], ["a cat lying on a bed", "qwerty 123", "a photo"], ["coffee"]]


def png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def our_pixels(cfg, role, datas):
    t = image_target(cfg, role)
    return np.stack([decode(d, (t,), 10**8, ("PNG",), draft=False)[0][role] for d in datas])


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, ["itm.model=tiny:blip-itm", "clip.model=tiny:clip", "itm.device=cpu", "clip.device=cpu"])


def test_itm_and_itc_equal_the_models_own_forward(cfg, photos):
    import torch
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    from pipeline.models.random_weights import ensure_tiny

    datas = [png(p) for p in photos[:3]]
    itm, itc = load_itm(cfg.itm).score(our_pixels(cfg.itm, "itm", datas), TEXTS)
    path = ensure_tiny("blip-itm")
    processor = AutoProcessor.from_pretrained(path)
    model = BlipForImageTextRetrieval.from_pretrained(path).eval()
    for i, texts in enumerate(TEXTS):
        image = Image.open(io.BytesIO(datas[i])).convert("RGB")
        for j, text in enumerate(texts):
            inputs = processor(images=image, text=text, return_tensors="pt")
            with torch.no_grad():
                ref_itm = torch.softmax(model(**inputs).itm_score, dim=1)[0, 1].item()
                ref_itc = model(**inputs, use_itm_head=False).itm_score[0, 0].item()
            assert abs(itm[i][j] - ref_itm) <= 1e-4
            assert abs(itc[i][j] - ref_itc) <= 1e-4
    flat = [v for row in itm for v in row]
    assert max(flat) - min(flat) > 1e-3, "scores should depend on image and text"


def test_clip_similarity_and_embeddings_equal_the_reference(cfg, photos):
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from pipeline.models.random_weights import ensure_tiny

    datas = [png(p) for p in photos[:3]]
    clip = load_clip(cfg.clip)
    ours = clip.embed_images(our_pixels(cfg.clip, "clip", datas))
    path = ensure_tiny("clip")
    model = CLIPModel.from_pretrained(path).eval()
    proc, tok = AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]  # full size: the processor resizes
    with torch.no_grad():
        ref = model.get_image_features(**proc(images=images, return_tensors="pt")).pooler_output
    ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert (ours * ref).sum(1).min() >= 0.9999
    for i, texts in enumerate(TEXTS):
        t = clip.embed_texts(texts)
        with torch.no_grad():
            out = model(**proc(images=images[i], return_tensors="pt"), **tok(texts, padding=True, return_tensors="pt"))
        ref_cos = (out.logits_per_image[0] / model.logit_scale.exp()).detach().numpy()
        assert np.abs(t @ ours[i] - ref_cos).max() <= 1e-4


def test_minilm_prompt_embedding_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from pipeline.models.sources import minilm_dir

    cfg = load_config(None, ["text_embed.device=cpu"])  # the default id resolves to the PyPI package
    emb = load_text_embedder(cfg.text_embed)
    sentences = ["a photograph of an astronaut riding a horse", "an astronaut is riding a horse in a photo",
                 "a bowl of soup with noodles and vegetables"]
    ours = emb.embed(sentences)
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(sentences)
    assert ours.shape == (3, 384) and emb.dim == 384
    assert np.abs(ours - ref).max() <= 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    paraphrase, unrelated = float(ours[0] @ ours[1]), float(ours[0] @ ours[2])
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)


def clip_batch(cfg, photos, statuses, alts, captions=None):
    from pipeline.schema import CAPTIONS, ERROR, STATUS, TEXT

    pixels = our_pixels(cfg.clip, "clip", [png(p) for p in photos[: len(statuses)]])
    batch = {STATUS: np.array(statuses, dtype=object), ERROR: np.array([None] * len(statuses), dtype=object),
             TEXT: np.array(alts, dtype=object), "pixels_clip": pixels}
    if captions is not None:
        batch[CAPTIONS] = np.array(captions, dtype=object)
    return batch


@pytest.mark.parametrize("score", [True, False], ids=["ScoreClip", "EmbedImages"])
def test_clip_stage_scores_and_embeds_every_ok_row_from_one_text_forward(cfg, photos, score):
    from pipeline.config import EmbedConfig
    from pipeline.schema import IMAGE_EMBEDDING, SCORE_COLUMNS, TEXT_EMBEDDING
    from pipeline.stages.embed import EmbedImages
    from pipeline.stages.score import ScoreClip

    captions = [["a cat", "a dog"], ["a tree"], ["x"], ["a car", "a bus", "a boat"]]
    alts = ["a photo of a cat", None, "failed row", "   "]
    batch = clip_batch(cfg, photos, ["ok", "ok", "decode_error", "ok"], alts, captions if score else None)
    embed = EmbedConfig(dtype="float32", text=True)
    stage = (ScoreClip(cfg.clip, "pixels_clip", embed=embed) if score
             else EmbedImages(cfg.clip, "pixels_clip", embed=embed))
    clip = stage.model
    forwards = []
    real = clip.text_features
    clip.text_features = lambda texts: forwards.append(list(texts)) or real(texts)
    out = stage(batch)
    calls = list(forwards)
    ok = [0, 1, 3]
    text_score, caption_scores = SCORE_COLUMNS["clip"]
    images = clip.embed_images(batch["pixels_clip"][ok])
    assert [v is None for v in out[IMAGE_EMBEDDING]] == [False, False, True, False]
    assert np.allclose(np.stack(out[IMAGE_EMBEDDING][ok]), images, atol=1e-6)
    # the alt-text embedding only where there is alt-text
    assert [v is None for v in out[TEXT_EMBEDDING]] == [False, True, True, True]
    assert np.allclose(out[TEXT_EMBEDDING][0], clip.embed_texts([alts[0]])[0], atol=1e-6)
    assert len(calls) == 1  # one text forward: the scored texts hold the alt-texts
    if score:
        assert calls[0] == [alts[0], *captions[0], *captions[1], *captions[3]]
        assert out[text_score][0] == pytest.approx(float(clip.embed_texts([alts[0]])[0] @ images[0]), abs=1e-5)
        assert out[text_score][1] is None and out[text_score][2] is None
        for row, j in zip(ok, range(3), strict=True):
            want = clip.embed_texts(captions[row]) @ images[j]
            assert np.allclose(out[caption_scores][row], want, atol=1e-5)
        assert out[caption_scores][2] is None
    else:
        assert calls[0] == [alts[0]]


def test_clip_stage_on_a_batch_without_ok_rows(cfg, photos):
    from pipeline.config import EmbedConfig
    from pipeline.schema import IMAGE_EMBEDDING, SCORE_COLUMNS, TEXT_EMBEDDING
    from pipeline.stages.score import ScoreClip

    batch = clip_batch(cfg, photos, ["decode_error", "too_large"], ["a", "b"], [None, None])
    out = ScoreClip(cfg.clip, "pixels_clip", embed=EmbedConfig(dtype="float32", text=True))(batch)
    for col in (IMAGE_EMBEDDING, TEXT_EMBEDDING, SCORE_COLUMNS["clip"][1]):
        assert list(out[col]) == [None, None]
