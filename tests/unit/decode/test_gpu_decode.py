"""decode.device=cuda on the CPU: the header-only decode stage, EXIF orientation and resize on torch
tensors, and a model stage decoding its rows' bytes (nvJPEG stood in for by PIL; the real nvJPEG runs
in tests/test_gpu.py)."""

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.decode import gpu as gpu_decode
from pipeline.decode.geometry import ORIENTATION_TRANSPOSE, Target
from pipeline.decode.gpu import orient, resize_on_device
from pipeline.decode.image import resize_to
from pipeline.decode.targets import processor_size_target
from pipeline.schema import DECODE_ERROR, ERROR, GPU_DECODE, IMAGE, OK, STATUS, UNSUPPORTED_FORMAT
from pipeline.stages.decode import DecodeImages


def jpeg(arr: np.ndarray, orientation: int = 1, **kw) -> bytes:
    im = Image.fromarray(arr)
    exif = im.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=92, exif=exif.tobytes(), **kw)
    return buf.getvalue()


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_on_tensors_matches_pil(orientation):
    import torch

    arr = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    name = ORIENTATION_TRANSPOSE.get(orientation)
    want = np.asarray(im.transpose(Image.Transpose[name]) if name else im)
    got = orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("target", [Target("p", 384, 384), Target("p", 224, 224, "crop", 224),
                                    Target("p", 224, 224, "crop", 256)], ids=["squash", "crop", "crop-256"])
@pytest.mark.parametrize("size", [(1200, 800), (640, 960), (2000, 300)], ids=["landscape", "portrait", "banner"])
def test_resize_on_tensors_follows_the_processor_path(photos, target, size):
    """torch's antialiased bicubic ≈ PIL's bicubic (the processor's filter): same size and crop box,
    pixels within a few levels on real photos."""
    import torch

    im = Image.fromarray(photos[0]).resize(size, Image.Resampling.BICUBIC)
    want = resize_to(im, target).astype(np.int16)
    got = resize_on_device(torch.from_numpy(np.asarray(im)).permute(2, 0, 1), target).numpy().astype(np.int16)
    assert got.shape == want.shape == (target.height, target.width, 3)
    diff = np.abs(got - want)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 6


def test_decode_stage_on_cuda_checks_headers_and_passes_the_bytes_on(photos):
    cfg = load_config(None, ["decode.device=cuda", "decode.max_pixels=1000000"]).decode
    good = jpeg(photos[0][:200, :250], orientation=6)
    grey = jpeg(photos[1][:100, :100, 0])
    cut = jpeg(photos[2])[:-500]  # truncated: no EOI marker, left to the CPU's strict decoder
    images = [good, grey, png(photos[3][:50, :60]), cut, b"not an image", jpeg(np.zeros((1100, 1000, 3), np.uint8))]
    n = len(images)
    batch = {IMAGE: np.array(images, dtype=object), STATUS: np.array([OK] * n, dtype=object),
             ERROR: np.array([None] * n, dtype=object)}
    out = DecodeImages(cfg, (Target("pixels_clip", 224, 224, "crop", 224),))(batch)
    assert not any(k.startswith("pixels") for k in out)  # no pixels on the CPU
    assert list(out[STATUS]) == [OK, OK, OK, OK, UNSUPPORTED_FORMAT, "too_large"]
    assert list(out[GPU_DECODE]) == [6, 1, 0, 0, 0, 0]  # JPEG → its orientation; PNG, cut JPEG → CPU
    assert (out["width"][0], out["height"][0]) == (200, 250)  # as shown: orientation 6 turns it
    assert list(out[IMAGE][:4]) == images[:4] and list(out[IMAGE][4:]) == [b"", b""]


def test_model_stage_decodes_its_rows_and_fails_only_the_bad_ones(photos, monkeypatch):
    """CaptionImages with decode.device=cuda: nvJPEG (here PIL on the CPU) for JPEGs, the isolated CPU
    decoder for what nvJPEG refuses and for other formats; a truncated JPEG is a decode_error row."""
    import torch

    from pipeline.models.captioner import PIXELS_CAPTION, caption_target
    from pipeline.stages.caption import CaptionImages

    refused = jpeg(photos[5][:120, :160])
    calls: list[int] = []

    def fake_nvjpeg(datas, device):
        calls.append(len(datas))
        return [None if d == refused else torch.from_numpy(np.asarray(Image.open(io.BytesIO(d)).convert("RGB"))).permute(2, 0, 1)
                for d in datas]

    monkeypatch.setattr(gpu_decode, "nvjpeg", fake_nvjpeg)
    cfg = load_config(None, ["decode.device=cuda", "caption.model=tiny:blip", "caption.device=cpu",
                             "caption.strategy=greedy", "caption.max_new_tokens=4", "caption.min_new_tokens=2"])
    images = [jpeg(photos[0][:300, :400], orientation=3), png(photos[1][:90, :90]), jpeg(photos[2])[:-400], refused,
              jpeg(photos[3][:64, :64])]
    n = len(images)
    batch = {IMAGE: np.array(images, dtype=object), STATUS: np.array([OK] * n, dtype=object),
             ERROR: np.array([None] * n, dtype=object), "text": np.array(["x"] * n, dtype=object)}
    decoded = DecodeImages(cfg.decode, (caption_target(cfg.caption),))(batch)
    out = CaptionImages(cfg.caption, PIXELS_CAPTION)(decoded)
    assert calls == [3]  # one batched call for the three whole JPEGs
    assert list(out[STATUS]) == [OK, OK, DECODE_ERROR, OK, OK]
    assert "Error" in out[ERROR][2]
    assert all(isinstance(out["caption"][i], str) for i in (0, 1, 3, 4)) and out["caption"][2] is None


def test_pixels_decoded_on_the_device_give_the_processor_path_embeddings(photos, monkeypatch, tiny_blip):
    """Fidelity of the GPU path's resize: the vision tower's output on decode_on_device pixels vs the
    HF processor's own path (PIL decode + processor), cosine ≥ 0.99."""
    import torch
    from transformers import AutoImageProcessor, BlipForConditionalGeneration

    from pipeline.models.random_weights import ensure_tiny

    path = ensure_tiny("blip-small")
    monkeypatch.setattr(gpu_decode, "nvjpeg", lambda datas, device: [
        torch.from_numpy(np.asarray(Image.open(io.BytesIO(d)).convert("RGB"))).permute(2, 0, 1) for d in datas])
    ip = AutoImageProcessor.from_pretrained(path)
    model = BlipForConditionalGeneration.from_pretrained(path).eval()
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(p).resize((int(rng.integers(500, 1600)), int(rng.integers(500, 1600)))) for p in photos[:12]]
    datas = [jpeg(np.asarray(im)) for im in ims]
    target = processor_size_target(ip, "p")
    pixels, failed = gpu_decode.decode_on_device(datas, [1] * len(datas), target, "cpu")
    assert not failed and pixels.shape == (len(datas), target.height, target.width, 3)
    from pipeline.models.pixels import pixel_values

    with torch.inference_mode():
        ref = model.vision_model(pixel_values=ip(images=[Image.open(io.BytesIO(d)).convert("RGB") for d in datas],
                                                 return_tensors="pt")["pixel_values"]).pooler_output
        got = model.vision_model(pixel_values=pixel_values(ip, pixels, "cpu", torch.float32)).pooler_output
    assert torch.nn.functional.cosine_similarity(ref, got).min() >= 0.99


def test_decode_on_cuda_without_torchvision_is_a_one_line_config_error(monkeypatch):
    import importlib.util

    from pipeline.config import ConfigError
    from pipeline.job import decode_stage

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^config: decode\.device: 'cuda' needs torchvision"):
        decode_stage(load_config(None, ["decode.device=cuda"]), {"clip": Target("p", 224, 224, "crop", 224)})


def test_stage_pixels_takes_the_decoded_column_without_copying_a_full_batch():
    """With CPU decode: all rows ok → the column itself (no per-batch copy of every pixel in the
    actor's thread); some rows failed → just their pixels."""
    from pipeline.decode.gpu import stage_pixels

    px = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    batch = {"pixels_clip": px, STATUS: np.array([OK] * 4, dtype=object)}
    rows, got = stage_pixels(batch, "pixels_clip", np.arange(4), model=None)
    assert got is px and list(rows) == [0, 1, 2, 3]
    rows, got = stage_pixels(batch, "pixels_clip", np.array([1, 3]), model=None)
    np.testing.assert_array_equal(got, px[[1, 3]])
    assert list(rows) == [1, 3]
