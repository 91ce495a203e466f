"""The report's ITM GradCAM (BLIP's blog): equal to the same gradient computed another way."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import load_config
from pipeline.review.html_report import gradcam, load_gradcam_model


@pytest.fixture(scope="module")
def itm():
    return load_gradcam_model(load_config(None, ["itm.model=tiny:blip-itm", "itm.device=cpu"]))


def hooked(model, processor, image, text, layer):
    """The model's own forward (use_itm_head), the layer's attention kept by a forward hook, backward()."""
    kept = {}

    def hook(module, args, out):  # (context, attention probabilities)
        out[1].retain_grad()
        kept["attn"] = out[1]

    handle = model.text_encoder.encoder.layer[layer].crossattention.self.register_forward_hook(hook)
    try:
        inputs = processor(images=image, text=text, return_tensors="pt")
        logits = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                       attention_mask=inputs["attention_mask"], use_itm_head=True).itm_score
        logits[:, 1].sum().backward()
    finally:
        handle.remove()
    attn = kept["attn"]
    cam = (attn * attn.grad.clamp(min=0)).mean(dim=1)[0, :, 1:].detach().numpy()
    return cam, float(torch.softmax(logits.detach(), dim=-1)[0, 1])


@pytest.mark.parametrize("layer", [0, 1])
def test_gradcam_equals_the_gradient_taken_through_a_hook(itm, photos, layer):
    model, processor = itm
    image = Image.fromarray(photos[0])
    text = "a cat looking at the camera"
    tokens, maps, prob = gradcam(model, processor, image, text, layer=layer)
    cam, expected_prob = hooked(model, processor, image, text, layer)
    grid = maps.shape[-1]
    assert maps.shape == (len(tokens), grid, grid) and grid * grid == cam.shape[-1]
    assert tokens[0] in ("[CLS]", "[ENC]") and "cat" in tokens
    np.testing.assert_allclose(maps.reshape(len(tokens), -1), cam, rtol=1e-5, atol=1e-9)
    assert (maps > 0).any()  # the tiny model's gradient is not all clamped away
    assert prob == pytest.approx(expected_prob, abs=1e-6)
