"""The benchmark's code paths (bench/), on the CPU with tiny configs (the GPU figures come from a GPU box)."""

import json

import pytest

from bench.__main__ import main
from jobs.caption import JOB as CAPTION


@pytest.mark.slow  # runs every preset job end to end on a local Ray
def test_gpu_suite_runs_on_cpu_with_tiny_configs(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["--device", "cpu", "--gpu-suite", "--tiny", "--quick", "--batch-size", "4", "--out", str(out),
                 "--e2e-variant", "blip-base:caption.batch_size=4,caption.num_beams=2"]) == 0
    res = json.loads(out.read_text())
    assert set(res["gpu"]) == {"blip-base@4", "blip-base@4+stock", "clip-b32@4"}  # BLIP: transformers' decoder beside ours
    assert all(r["model_only_img_s"] > 0 for r in res["gpu"].values())
    assert res["gpu"]["blip-base@4+stock"]["variant"] == "stock" and res["gpu"]["blip-base@4"]["variant"] == "capfilt"
    assert res["environment"]["device"] == "cpu"
    printed = capsys.readouterr().out
    assert "| blip-base@4 |" in printed
    # End to end: each preset job ran on 2 linked copies of a 16-image shard, and Ray Data's stats
    # give the time in the fused read+decode op and in every model stage.
    e2e = res["e2e"]
    variant = "blip-base[caption.batch_size=4,caption.num_beams=2]"  # the same entry again, with overrides
    assert set(e2e) == {"blip-base", "blip-large", "clip-b32", "clip-l14", "clean", variant}
    assert all(r["images"] == 32 and r["img_s"] > 0 for r in e2e.values())
    assert e2e[variant]["overrides"] == ["caption.batch_size=4", "caption.num_beams=2"]
    assert {"ReadReadShards->MapBatches(DecodeImages)", "MapBatches(CaptionImages)"} <= set(e2e["blip-base"]["stages"])
    assert {"MapBatches(CaptionImages)", "MapBatches(ScoreItm)", "MapBatches(ScoreClip)"} <= set(e2e["clean"]["stages"])
    assert all(t["busy_s"] > 0 for op, t in e2e["clean"]["stages"].items() if "Select" not in op)
    assert "| clean (clean, clean-blip.yaml) | 32 |" in printed


@pytest.mark.slow  # builds and loads a 224M-parameter model
def test_full_size_blip_is_built_and_loads_through_capfilt(tmp_path):
    """The GPU suite's full-size BLIP-base (random weights, real class and processor) on the CPU."""
    import numpy as np

    from pipeline.config import load_config
    from pipeline.models.captioner import load_captioner
    from pipeline.models.random_weights import build_full_size

    build_full_size("blip-base", tmp_path / "blip-base", "cpu")
    cfg = load_config(None, [f"caption.model={tmp_path / 'blip-base'}", "caption.device=cpu", "caption.dtype=float32",
                             "caption.strategy=greedy", "caption.max_new_tokens=3", "caption.min_new_tokens=3"],
                      defaults=CAPTION.defaults)
    captioner = load_captioner(cfg.caption, None)
    assert sum(p.numel() for p in captioner.model.parameters()) > 200e6  # BLIP-base: 224M here, 247M real
    pixels = np.random.default_rng(0).integers(0, 256, (1, 384, 384, 3), dtype=np.uint8)
    assert len(captioner.caption(pixels)) == 1


def test_photos_fall_back_to_synthetic_ones_without_scikit_image(monkeypatch):
    """The offline GPU box may lack scikit-image: the benchmark still gets textured, photo-sized images."""
    import sys

    import numpy as np

    from tests.fixtures.samples import PHOTOS, photos

    monkeypatch.setitem(sys.modules, "skimage", None)  # `from skimage import data` now raises ImportError
    imgs = photos(256)
    assert len(imgs) == len(PHOTOS)
    assert all(im.dtype == np.uint8 and im.shape[0] == 256 and im.shape[2] == 3 for im in imgs)
    assert all(im.std() > 20 for im in imgs)  # not flat: JPEG has work to do


def test_cpu_side_by_side_of_blip_attention_runs_both_ways():
    """The CPU suite's `cross` part on tiny configs: both paths run, and they agree."""
    from transformers import BlipConfig

    from bench.cpu import bench_beam_cache, bench_cross_small, bench_itm_cross
    from bench.data import web_jpegs
    from pipeline.models.random_weights import ensure_tiny

    caption = bench_cross_small(web_jpegs(4), str(ensure_tiny("blip")), 1, 2, 0.1)
    assert caption["same_tokens"] is True and caption["stock_img_s"] > 0 and caption["capfilt_img_s"] > 0
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    itm = bench_itm_cross(1, 3, 2, 0.1, BlipConfig(vision_config={**small, "image_size": 64}, text_config=small))
    assert itm["max_abs_diff"] < 1e-4 and itm["stock_texts_s"] > 0 and itm["capfilt_texts_s"] > 0
    from transformers import GPT2Config, VisionEncoderDecoderConfig, ViTConfig

    vit = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                    patch_size=16)
    gpt2 = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, bos_token_id=99, eos_token_id=99,
                      add_cross_attention=True)
    beams = bench_beam_cache(1, 3, 0.1, VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, gpt2))
    assert beams["same_tokens"] is True and beams["stock_img_s"] > 0 and beams["capfilt_img_s"] > 0


def test_parquet_read_memory_part_reads_every_row_and_reports_it(tmp_path):
    """The `faults` part's Parquet figure on a small scale: each file is read whole in its own process,
    and the table row says what was compared."""
    from bench.cpu import bench_parquet_memory
    from bench.report import cpu_table

    res = bench_parquet_memory(tmp_path, 16, 2_000)
    assert res["imports_peak_mib"] > 20 and res["read_peak_mib_10x"] >= res["imports_peak_mib"]
    assert res["row_group_mib_10x"] > 5 * res["row_group_mib_1x"] and not list(tmp_path.iterdir())
    row = cpu_table({"parquet_memory": res}).splitlines()[-1]
    assert row.startswith("| read of a Parquet shard, one row group of") and row.endswith("| ≤ 1.1× |")


def test_startup_reports_the_median_run_with_its_phases_and_every_run():
    from bench.report import startup_rows
    from bench.startup import median_run

    def run(wall: float, first: float) -> dict:
        return {"wall_s": wall, "img_s": 100 / wall, "phases": {"ray_start": 2.0, "first_block": first, "total": wall}}

    after = median_run([run(11.0, 7.0), run(9.0, 5.0), run(10.0, 6.0)])
    assert after["wall_s"] == 10.0 and after["phases"]["first_block"] == 6.0  # the median run, phases and all
    assert after["wall_s_runs"] == [11.0, 9.0, 10.0]
    before = median_run([run(16.0, 10.0), run(15.0, 9.0)])
    assert before["wall_s"] == 15.0  # of an even count, the lower middle
    rows = startup_rows({"images_caption": 100, "images_embed": 800, "caption_before": before, "caption_after": after})
    assert rows[0].startswith("| 100-image `caption`, configs/tiny.yaml: whole command, s (img/s) "
                              "| 15.0 (6.7) | 10.0 (10.0) | 1.50× |")
    assert rows[1] == "| runs, s (the median's phases below) | 16.0, 15.0 | 11.0, 9.0, 10.0 | | |"
    assert "first_block 6.0" in rows[2]


def test_the_plan_part_counts_a_bounded_number_of_requests():
    """The plan bench on its own moto: with the runs' marker indexes, the requests do not grow with the
    shards (a listing per 1,000); without them, one per committed marker; the row renders."""
    from bench.plan import bench_plan
    from bench.report import cpu_table

    res = bench_plan(1200)
    assert res["brace"]["requests"] == res["glob"]["requests"] <= 12
    assert res["glob_no_index"]["requests"] >= 600  # the 600 committed markers, each read on its own
    assert "the plan of 1,200 shards on S3" in cpu_table({"plan": res})


def test_the_simulated_device_replaces_only_the_models_math(tmp_path):
    """The feed bench's device: the real CaptionImages and EmbedImages stages around it (pixel staging,
    processor, token decoding, normalisation), a wait per image in place of the model, each call logged."""
    import numpy as np

    from bench.feed import busy_fraction, load_simulated_captioner, load_simulated_clip
    from pipeline.config import CaptionConfig, ClipConfig
    from pipeline.stages.caption import CaptionImages
    from pipeline.stages.embed import EmbedImages

    log = str(tmp_path / "device.log")
    batch = {"status": np.array(["ok"] * 3 + ["decode_error"], dtype=object), "text": np.array([None] * 4, dtype=object),
             "pixels_caption": np.zeros((4, 64, 64, 3), np.uint8), "pixels_clip": np.zeros((4, 48, 48, 3), np.uint8)}
    cap = CaptionImages(CaptionConfig(model="tiny:blip", strategy="beam", num_beams=3, device="cpu"), "pixels_caption",
                        load=lambda cfg, opts: load_simulated_captioner(cfg, opts, per_image_s=0.01, log=log))
    out = cap(dict(batch))
    assert list(out["caption"][:3]) == ["a photograph of a dog running on the grass in the park"] * 3
    assert out["caption"][3] is None
    emb = EmbedImages(ClipConfig(model="tiny:clip", device="cpu"), "pixels_clip",
                      load=lambda cfg, opts: load_simulated_clip(cfg, opts, per_image_s=0.01, log=log))
    got = emb(dict(batch))
    assert np.allclose(np.linalg.norm(np.stack(list(got["image_embedding"][:3])).astype(np.float32), axis=1), 1, atol=1e-2)
    calls = [line.split() for line in open(log).read().splitlines()]
    assert [int(c[2]) for c in calls] == [3, 3] and all(float(c[1]) - float(c[0]) >= 0.03 for c in calls)
    (tmp_path / "b.log").write_text("0 1 8\n1 2 8\n3 4 8\n4 5 8\n")  # busy 2 of the 3 s from 1 to 4
    assert busy_fraction(str(tmp_path / "b.log"))["busy"] == pytest.approx(2 / 3)


def test_the_stage_part_measures_each_layer_on_the_same_images(tmp_path):
    """The read+decode stage's layers, in one process: each a cost per image of the same shards (their
    sizes are the benchmark's to report, not a test's: this VM's speed drifts)."""
    from bench.data import web_jpegs, write_shards
    from bench.stage import _decode_spec, layers
    from pipeline.io.shards import list_shards

    glob = write_shards(web_jpegs(12, seed=5), tmp_path / "in", 4)
    spec, cfg = _decode_spec()
    assert spec.args[1][0].height == 224 and cfg.input.rows_per_block == 64
    lay = layers(list_shards([glob]), spec, cfg, rounds=1)
    assert lay["images"] == 12
    assert all(lay[k] > 0 for k in ("decode_ms", "read_ms", "stage_ms", "stage_isolated_ms"))


def test_the_dedup_part_finds_the_brute_force_groups_and_reports_memory(ray_local, tmp_path):
    """The semantic dedup bench at a small size: planted groups found as every pair compared finds them,
    the largest process's peak and the time reported for each size."""
    from bench.dedup import bench_dedup
    from bench.report import cpu_table

    res = bench_dedup(tmp_path, 8000)
    assert res["check_same_groups"] and res["check_groups"]["found"] == res["check_groups"]["brute_force"] > 0
    assert res["check_same_as_reference"] and res["check_reference"]["common"] == res["check_reference"]["reference"] > 0
    assert res["full"]["rows"] == 8000 and res["quarter"]["rows"] == 2000
    assert res["full"]["peak_rss"] > 0 and res["full"]["duplicates"] > 0
    assert res["estimate"]["sample_rows"] == 8000 and res["estimate"]["predicted_s"] > 0  # one file: the sample
    table = cpu_table({"dedup": res})
    assert "semantic dedup of 8,000" in table and "`estimate dedup` of the 8,000 rows" in table
