"""The GPU benchmark's code path, on the CPU with tiny configs (the GPU figures come from a GPU box)."""

import json

from pipeline.bench import gpu_models, main


def test_gpu_suite_runs_on_cpu_with_tiny_configs(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["--device", "cpu", "--gpu-suite", "--tiny", "--quick", "--batch-size", "4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["gpu"]) == {"blip-base", "clip-b32"}
    assert all(r["model_only_img_s"] > 0 for r in res["gpu"].values())
    assert res["environment"]["device"] == "cpu"
    assert "| blip-base |" in capsys.readouterr().out


def test_full_size_configs_are_the_real_sizes():
    models = gpu_models(tiny=False)
    assert set(models) == {"blip-base", "blip-large", "clip-b32", "clip-l14"}
    assert models["blip-base"][1].vision_config.hidden_size == 768
    assert models["blip-large"][1].vision_config.num_hidden_layers == 24
    assert models["clip-l14"][1].vision_config.patch_size == 14
    assert models["clip-b32"][1].vision_config.patch_size == 32
