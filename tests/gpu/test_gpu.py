"""CUDA-only paths: run on a GPU machine (`pytest -m gpu`), skipped elsewhere."""

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.models.captioner import load_captioner
from pipeline.models.pixels import _LOCAL, pixel_values
from tests.fixtures.samples import jpeg

pytestmark = pytest.mark.gpu


def test_pixels_staged_through_pinned_memory_equal_the_cpu_path():
    import torch
    from transformers import BlipImageProcessorPil

    ip = BlipImageProcessorPil(size={"height": 64, "width": 64})
    arr = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    cpu = pixel_values(ip, arr, "cpu", torch.float32)
    gpu = pixel_values(ip, arr, "cuda", torch.float32)
    assert gpu.device.type == "cuda" and _LOCAL.pinned[(5, 64, 64, 3)].is_pinned()
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
    again = pixel_values(ip, arr[::-1].copy(), "cuda", torch.float32)  # the buffer is reused, not stale
    torch.testing.assert_close(again.cpu(), cpu.flip(0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_captions_on_cuda_match_the_cpu_in_float32(cache):
    cfg = ["caption.model=tiny:blip2-opt", "caption.strategy=greedy", "caption.max_new_tokens=6",
           "caption.min_new_tokens=3", "caption.dtype=float32", f"caption.cache={cache}"]
    arr = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    on_gpu = load_captioner(load_config(None, [*cfg, "caption.device=cuda"]).caption).caption(arr)
    on_cpu = load_captioner(load_config(None, [*cfg, "caption.device=cpu"]).caption).caption(arr)
    assert on_gpu == on_cpu


def test_nvjpeg_decode_matches_the_cpu_path_and_bad_images_become_rows(photos):
    """decode.device=cuda's real nvJPEG: web-size JPEGs (colour, grey, CMYK) within a few levels of
    the CPU processor path (PIL decode + bicubic); a truncated JPEG and a refused one are rows."""
    import io

    import torch
    from PIL import Image

    from pipeline.decode.geometry import Target
    from pipeline.decode.gpu import decode_on_device
    from pipeline.decode.image import resize_to

    target = Target("p", 224, 224, "crop", 224)
    big = [np.asarray(Image.fromarray(p).resize((1200, 900), Image.Resampling.BICUBIC)) for p in photos[:6]]
    datas = [jpeg(a) for a in big[:4]] + [jpeg(big[4][:, :, 0])]
    cmyk = io.BytesIO()
    Image.fromarray(big[5]).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    datas += [cmyk.getvalue(), jpeg(big[0])[:-3000], b"\xff\xd8garbage\xff\xd9"]
    marks = [1, 6, 1, 1, 1, 0, 0, 1]  # as the CPU stage marks them: CMYK and the cut file go to the CPU
    pixels, failed = decode_on_device(datas, marks, target, "cuda")
    assert pixels.is_cuda and pixels.shape == (6, 224, 224, 3)
    # the cut file: the strict CPU decoder's error; the garbage: what PIL makes of it (not an image)
    assert failed.keys() == {6, 7} and (failed[6][0], failed[7][0]) == ("decode_error", "unsupported_format")
    for k, data in enumerate(datas[:6]):
        im = Image.open(io.BytesIO(data)).convert("RGB")
        if marks[k] == 6:
            im = im.transpose(Image.Transpose.ROTATE_270)
        want = torch.from_numpy(resize_to(im, target).astype(np.int16))
        diff = (pixels[k].cpu().to(torch.int16) - want).abs().float()
        assert diff.mean() < 2.0, (k, diff.mean())


def test_embed_job_with_decode_on_cuda_equals_the_cpu_decode(tmp_path):
    """The embed job end to end on Ray with decode.device=cuda: every row once, embeddings ≈ those of
    the CPU decode path. (No broken image here: pyarrow < 26 cannot read a Parquet null fixed-size
    list, apache/arrow#35692, and GPU boxes ship older pyarrow; bad images on the GPU path are
    covered above and in tests/test_gpu_decode.py.)"""
    import pyarrow.parquet as pq
    import ray

    from tests.fixtures.commands import run
    from tests.fixtures.samples import samples, tar_bytes

    keys = []
    (tmp_path / "in").mkdir()
    for s in range(2):
        members = {}
        for i, (img, text) in enumerate(samples(6, s * 6, size=300)):
            members[f"{s:05d}{i:04d}.jpg"], members[f"{s:05d}{i:04d}.txt"] = img, text.encode()
            keys.append(f"{s:05d}{i:04d}")
        (tmp_path / "in" / f"{s:05d}.tar").write_bytes(tar_bytes(members))
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING", configure_logging=False)
    try:
        tables = {}
        for device in ("cpu", "cuda"):
            out = tmp_path / f"out-{device}"
            # the model in float32 on both runs: what differs is the decode alone (in bfloat16 one rounding
            # step of a random tiny model moved an embedding to cosine 0.978, H200, 2026-12-04)
            assert run("embed", "tiny-embed.yaml", [str(tmp_path / "in" / "*.tar")], str(out), "--set", "clip.device=cuda",
                       "--set", "clip.num_gpus=0.5", "--set", "clip.dtype=float32", "--set", f"decode.device={device}",
                       "--set", "embed.dtype=float32") == 0
            tables[device] = {r["key"]: r for r in pq.read_table(out / "embeddings").to_pylist()}
    finally:
        ray.shutdown()
    cpu, gpu = tables["cpu"], tables["cuda"]
    assert sorted(gpu) == sorted(keys) and all(r["status"] == "ok" for r in gpu.values())
    ordered = sorted(gpu)
    on_cpu = np.array([cpu[k]["image_embedding"] for k in ordered])
    for i, k in enumerate(ordered):
        sims = on_cpu @ np.asarray(gpu[k]["image_embedding"])
        assert int(sims.argmax()) == i and sims[i] >= 0.98, (k, sims[i])  # its own image, nearly the same vector


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_blip_attention_on_cuda_writes_transformers_tokens(dtype):
    """capfilt's BLIP attention (SDPA vision tower, one cross-attention K/V per image) on CUDA's SDPA
    kernels: the same beam-search and sampled tokens as transformers' eager attention on the same GPU
    in float32; in bfloat16 (the production dtype, where the kernels round differently) it runs and
    writes captions of the same shape."""
    import torch
    from transformers import BlipForConditionalGeneration

    from pipeline.models.blip_attention import install, stock_attention
    from pipeline.models.random_weights import ensure_tiny

    model = BlipForConditionalGeneration.from_pretrained(ensure_tiny("blip"), dtype=getattr(torch, dtype)).cuda().eval()
    shared = install(model)
    size = model.config.vision_config.image_size
    pv = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(0)).to("cuda", model.dtype)
    for kw in ({"num_beams": 3, "num_return_sequences": 2}, {"do_sample": True, "num_return_sequences": 3}):
        with torch.inference_mode():
            torch.manual_seed(5)
            with stock_attention(model):
                stock = model.generate(pixel_values=pv, max_new_tokens=12, min_new_tokens=4, **kw)
            torch.manual_seed(5)
            with shared.session(len(pv)):
                ours = model.generate(pixel_values=pv, max_new_tokens=12, min_new_tokens=4, **kw)
        assert ours.shape == stock.shape and int(ours.max()) < model.config.text_config.vocab_size
        if dtype == "float32":
            assert torch.equal(ours, stock), kw
