"""Alpha-CLIP: a checkpoint in OpenAI's layout, converted by capfilt, equals OpenAI's two-convolution forward."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.models.alpha_clip import alpha_channel, convert, with_alpha
from pipeline.models.random_weights import ensure_tiny
from pipeline.models.random_weights import openai_visual_checkpoint as openai_checkpoint

WIDTH, PATCH, GRID, LAYERS, HEADS = 32, 16, 3, 2, 2  # tiny:clip's vision tower


def openai_forward(sd: dict[str, torch.Tensor], rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Alpha-CLIP's visual forward as its authors wrote it: conv1(rgb) + conv1_alpha(alpha), then OpenAI's
    ViT (QuickGELU, pre-LN residual blocks, class token through ln_post and proj)."""
    w = {k.removeprefix("visual."): v for k, v in sd.items()}
    n = rgb.shape[0]
    x = F.conv2d(rgb, w["conv1.weight"], stride=PATCH) + F.conv2d(alpha, w["conv1_alpha.weight"], stride=PATCH)
    x = x.reshape(n, WIDTH, -1).permute(0, 2, 1)
    x = torch.cat([w["class_embedding"].expand(n, 1, WIDTH), x], dim=1) + w["positional_embedding"]
    x = F.layer_norm(x, (WIDTH,), w["ln_pre.weight"], w["ln_pre.bias"])
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        y = F.layer_norm(x, (WIDTH,), w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        q, k, v = (y @ w[p + "attn.in_proj_weight"].T + w[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        split = lambda t: t.reshape(n, -1, HEADS, WIDTH // HEADS).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(WIDTH // HEADS), dim=-1) @ split(v)
        x = x + att.transpose(1, 2).reshape(n, -1, WIDTH) @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
        y = F.layer_norm(x, (WIDTH,), w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = y @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"]
        x = x + (h * torch.sigmoid(1.702 * h)) @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]
    return F.layer_norm(x[:, 0], (WIDTH,), w["ln_post.weight"], w["ln_post.bias"]) @ w["proj"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from transformers import CLIPModel

    tmp = tmp_path_factory.mktemp("alpha")
    sd = openai_checkpoint()
    torch.save(sd, tmp / "alpha_clip_tiny.pth")
    out = convert(str(tmp / "alpha_clip_tiny.pth"), str(tmp / "hf"), str(ensure_tiny("clip")))
    return sd, CLIPModel.from_pretrained(out).eval(), out


@pytest.mark.parametrize("region", [False, True])
def test_converted_model_equals_the_two_convolution_forward(converted, region):
    sd, model, _ = converted
    g = torch.Generator().manual_seed(1)
    rgb = torch.randn(3, 3, GRID * PATCH, GRID * PATCH, generator=g)
    mask = None
    if region:  # a box on each image
        mask = torch.zeros(3, GRID * PATCH, GRID * PATCH)
        mask[0, :20, :20], mask[1, 10:40, 5:30], mask[2, 30:, 30:] = 1, 1, 1
    with torch.no_grad():
        ours = model.get_image_features(pixel_values=with_alpha(rgb, mask)).pooler_output
        alpha = alpha_channel(mask if region else torch.ones(3, GRID * PATCH, GRID * PATCH))
        theirs = openai_forward(sd, rgb, alpha)
    assert model.config.vision_config.num_channels == 4
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_the_region_changes_the_embedding_and_the_directory_is_a_whole_clip(converted):
    from transformers import AutoImageProcessor, AutoTokenizer

    _, model, out = converted
    rgb = torch.randn(1, 3, GRID * PATCH, GRID * PATCH)
    left, right = torch.zeros(1, GRID * PATCH, GRID * PATCH), torch.zeros(1, GRID * PATCH, GRID * PATCH)
    left[..., :24], right[..., 24:] = 1, 1
    with torch.no_grad():
        a = model.get_image_features(pixel_values=with_alpha(rgb, left)).pooler_output
        b = model.get_image_features(pixel_values=with_alpha(rgb, right)).pooler_output
    assert (a - b).abs().max() > 1e-3
    assert AutoTokenizer.from_pretrained(out) is not None and AutoImageProcessor.from_pretrained(out) is not None


def test_a_checkpoint_without_an_alpha_convolution_is_refused(tmp_path):
    sd = {k: v for k, v in openai_checkpoint().items() if "conv1_alpha" not in k}
    torch.save(sd, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="not an Alpha-CLIP visual tower"):
        convert(str(tmp_path / "plain.pth"), str(tmp_path / "out"), str(ensure_tiny("clip")))


def test_the_convert_command(tmp_path, capsys):
    from pipeline.cli import main

    torch.save(openai_checkpoint(2), tmp_path / "a.pth")
    assert main(["convert", "alpha-clip", str(tmp_path / "a.pth"), str(tmp_path / "hf"), "--base", "tiny:clip"]) == 0
    assert "Alpha-CLIP →" in capsys.readouterr().out and (tmp_path / "hf" / "config.json").exists()
    assert main(["convert", "alpha-clip", str(tmp_path / "missing.pth"), str(tmp_path / "x"), "--base", "tiny:clip"]) == 2
    assert capsys.readouterr().err.startswith("capfilt: convert: ")


def test_the_clip_stage_runs_a_converted_alpha_clip_on_the_whole_image(converted, photos):
    """`clip.model: <converted dir>`: capfilt's CLIP embedder feeds the 4th channel (all ones: the whole
    image) and gives the two-convolution forward's embedding, L2-normalised."""
    import numpy as np

    from pipeline.config import load_config
    from pipeline.decode.image import decode
    from pipeline.models.clip import load_clip
    from pipeline.models.loading import image_target

    sd, _, out = converted
    cfg = load_config(None, [f"clip.model={out}", "clip.device=cpu", "clip.dtype=float32"])
    clip = load_clip(cfg.clip)
    t = image_target(cfg.clip, "clip")
    from tests.fixtures.samples import jpeg

    pixels = np.stack([decode(jpeg(p), (t,), 10**8, ("JPEG",), draft=False)[0]["clip"] for p in photos[:2]])
    ours = clip.embed_images(pixels)
    pv = clip.image_processor(images=list(pixels), return_tensors="pt")["pixel_values"]
    theirs = openai_forward(sd, pv, alpha_channel(torch.ones(2, *pv.shape[2:])))
    theirs = torch.nn.functional.normalize(theirs, dim=-1).numpy()
    assert clip.alpha and np.abs(ours - theirs).max() <= 1e-5


def test_region_embeddings_and_scores_equal_the_two_convolution_forward_with_each_region(converted, photos):
    """Regions (two boxes and a mask) through the decode and CLIP stages: one embedding per region, each
    the two-convolution forward with that region's alpha map; every text scored against every region."""
    import json

    import numpy as np

    from pipeline.config import DecodeConfig, EmbedConfig, InputConfig, load_config
    from pipeline.decode.regions import row_maps
    from pipeline.models.loading import image_target
    from pipeline.schema import (
        CAPTIONS,
        ERROR,
        HEIGHT,
        IMAGE,
        MASK,
        META,
        OK,
        REGION_CAPTION_SCORES,
        REGION_EMBEDDINGS,
        REGION_TEXT_SCORES,
        REGIONS,
        STATUS,
        TEXT,
        WIDTH,
    )
    from pipeline.stages.decode import DecodeImages
    from pipeline.stages.score import ScoreClip
    from tests.fixtures.reference import png

    sd, _, out = converted
    cfg = load_config(None, [f"clip.model={out}", "clip.device=cpu", "clip.dtype=float32"])
    t = image_target(cfg.clip, "pixels_clip")
    img = photos[4][:90, :120]
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[30:70, 50:110] = 255
    batch = {IMAGE: np.array([png(img), png(photos[5])], dtype=object), STATUS: np.array([OK, OK], dtype=object),
             ERROR: np.array([None, None], dtype=object), TEXT: np.array(["a dog", None], dtype=object),
             META: np.array([json.dumps({"regions": [[0, 0, 60, 45], [60, 45, 120, 90]]}), None], dtype=object),
             MASK: np.array([png(mask), None], dtype=object)}
    batch = DecodeImages(DecodeConfig(formats=("PNG",), fast=False), (t,), InputConfig())(batch)
    batch[CAPTIONS] = np.array([["a cat", "a car"], ["a tree"]], dtype=object)
    stage = ScoreClip(cfg.clip, t.name, None, EmbedConfig(dtype="float32"))
    batch = stage(batch)
    assert batch[REGIONS][0] == [[0, 0, 60, 45], [60, 45, 120, 90], [50, 30, 110, 70]] and batch[REGIONS][1] is None
    got = np.array(batch[REGION_EMBEDDINGS][0])
    assert got.shape == (3, 24) and batch[REGION_EMBEDDINGS][1] is None
    maps = row_maps(batch[REGIONS][0], batch[MASK][0], int(batch[WIDTH][0]), int(batch[HEIGHT][0]), t)
    pv = stage.model.image_processor(images=[batch[t.name][0]] * 3, return_tensors="pt")["pixel_values"]
    theirs = openai_forward(sd, pv, alpha_channel(torch.from_numpy(maps).float() / 255))
    theirs = torch.nn.functional.normalize(theirs, dim=-1).numpy()
    assert np.abs(got - theirs).max() <= 1e-5
    assert np.abs(got[0] - got[1]).max() > 1e-3  # the region changes the embedding
    texts = stage.model.embed_texts(["a dog", "a cat", "a car"])
    np.testing.assert_allclose(batch[REGION_TEXT_SCORES][0], got @ texts[0], atol=1e-5)
    np.testing.assert_allclose(batch[REGION_CAPTION_SCORES][0], got @ texts[1:].T, atol=1e-5)
    assert batch[REGION_TEXT_SCORES][1] is None
