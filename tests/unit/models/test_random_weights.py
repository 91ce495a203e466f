"""Random-weight models of the real classes: the full-size configs are the real sizes."""

from pipeline.models.random_weights import model_configs


def test_full_size_configs_are_the_real_sizes():
    models = model_configs(tiny=False)
    assert set(models) == {"blip-base", "blip-large", "clip-b32", "clip-l14"}
    assert models["blip-base"][1].vision_config.hidden_size == 768
    assert models["blip-large"][1].vision_config.num_hidden_layers == 24
    assert models["clip-l14"][1].vision_config.patch_size == 14
    assert models["clip-b32"][1].vision_config.patch_size == 32
