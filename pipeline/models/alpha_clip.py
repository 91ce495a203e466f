"""Alpha-CLIP: CLIP with an alpha channel that says where to look, as a transformers CLIP directory.

Alpha-CLIP's only new layer is `conv1_alpha`, a 1-channel patch convolution whose output is added to the
RGB one: `conv1(rgb) + conv1_alpha(alpha)`. That is a 4-channel patch embedding whose weight is
`cat(W_rgb, W_alpha)` along the input channels, so a released checkpoint (OpenAI's visual-tower key
names: `conv1.weight`, `conv1_alpha.weight`, `transformer.resblocks.N.attn.in_proj_weight`, ..., `proj`)
becomes transformers' `CLIPModel` with `vision_config.num_channels = 4` — the text tower, tokenizer and
image processor from `--base` (the CLIP it was fine-tuned from: ViT-L/14@336 for LLaVA-1.5's tower) — and
then loads with `from_pretrained` like any CLIP. The mapping of OpenAI's names is transformers' own
conversion script's (convert_clip_original_pytorch_to_hf.py), applied to the visual tower only.

The alpha channel: a mask in [0, 1] at the image's resolution, resized like the image, normalised with
mean 0.5 and std 0.26 (inside +1.923, outside -1.923); a whole image is an all-ones mask. The released
weights are for research use only (their licence).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ALPHA_MEAN, ALPHA_STD = 0.5, 0.26


def alpha_channel(mask: Any) -> Any:
    """(n, H, W) masks in [0, 1] at the pixel values' size → (n, 1, H, W) normalised alpha."""
    return ((mask - ALPHA_MEAN) / ALPHA_STD).unsqueeze(1)


def with_alpha(pixel_values: Any, mask: Any | None = None) -> Any:
    """RGB pixel values (n, 3, H, W) + masks (n, H, W) → the converted model's 4-channel input; no mask:
    the whole image (all ones)."""
    import torch

    if mask is None:
        mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[2:], dtype=pixel_values.dtype,
                          device=pixel_values.device)
    return torch.cat([pixel_values, alpha_channel(mask.to(pixel_values.dtype))], dim=1)


def _visual(state: dict[str, Any]) -> dict[str, Any]:
    """The visual tower's entries, whatever wraps them (`visual.`, `module.`, a `state_dict` key)."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for k, v in state.items():
        k = re.sub(r"^(module\.)?(visual\.)?", "", k)
        out[k] = v
    if "conv1.weight" not in out or "conv1_alpha.weight" not in out:
        raise ValueError("not an Alpha-CLIP visual tower: no conv1.weight and conv1_alpha.weight "
                         f"(keys: {', '.join(sorted(out)[:6])}, ...)")
    return out


def vision_config(state: dict[str, Any], base: Any) -> Any:
    """The base CLIP's vision config, shaped by the checkpoint (sizes read from the tensors)."""
    width, _, patch, _ = state["conv1.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))
    grid = int(round((state["positional_embedding"].shape[0] - 1) ** 0.5))
    cfg = base.vision_config
    cfg.hidden_size, cfg.patch_size, cfg.image_size, cfg.num_hidden_layers = width, patch, grid * patch, layers
    cfg.intermediate_size = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    if width % 64 == 0:  # OpenAI's ViTs: 64-wide heads (a tiny test tower keeps its base's count)
        cfg.num_attention_heads = width // 64
    cfg.num_channels = 4
    cfg.hidden_act = "quick_gelu"  # OpenAI's CLIP
    cfg.layer_norm_eps = 1e-5
    return cfg


def visual_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's visual-tower names → transformers' `vision_model.*` and `visual_projection.weight`."""
    import torch

    hf: dict[str, Any] = {
        "vision_model.embeddings.patch_embedding.weight": torch.cat([state["conv1.weight"], state["conv1_alpha.weight"]], 1),
        "vision_model.embeddings.class_embedding": state["class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["ln_pre.weight"], "vision_model.pre_layrnorm.bias": state["ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["ln_post.weight"],
        "vision_model.post_layernorm.bias": state["ln_post.bias"],
        "visual_projection.weight": state["proj"].t().contiguous(),
    }
    n = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))
    for i in range(n):
        src, dst = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        # nn.MultiheadAttention's names, or a Linear's (`attn.in_proj.weight`) in re-implementations
        w = state[src + "attn.in_proj_weight"] if src + "attn.in_proj_weight" in state else state[src + "attn.in_proj.weight"]
        b = state[src + "attn.in_proj_bias"] if src + "attn.in_proj_bias" in state else state[src + "attn.in_proj.bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            hf[dst + f"self_attn.{name}.weight"] = w.chunk(3, 0)[j]
            hf[dst + f"self_attn.{name}.bias"] = b.chunk(3, 0)[j]
        pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        for a, h in pairs.items():
            hf[dst + h + ".weight"] = state[src + a + ".weight"]
            hf[dst + h + ".bias"] = state[src + a + ".bias"]
    return hf


def convert(checkpoint: str, out_dir: str, base_path: str) -> Path:
    """A released Alpha-CLIP `.pth` → an HF CLIPModel directory (`from_pretrained`-ready). `base_path`: what
    `from_pretrained` takes for the CLIP it was fine-tuned from (loading.resolve_model resolves ids)."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    base = base_path
    state = _visual(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model = CLIPModel.from_pretrained(base_path)
    config = model.config
    config.vision_config = vision_config(state, config)
    if config.projection_dim != state["proj"].shape[1]:
        raise ValueError(f"--base {base!r} projects to {config.projection_dim}, the checkpoint to {state['proj'].shape[1]}: "
                         "use the CLIP the checkpoint was fine-tuned from")
    converted = CLIPModel(config).eval()
    converted.text_model.load_state_dict(model.text_model.state_dict())
    converted.text_projection.load_state_dict(model.text_projection.state_dict())
    converted.logit_scale.data.copy_(model.logit_scale.data)
    missing, unexpected = converted.load_state_dict(visual_state_dict(state), strict=False)
    vision_missing = [k for k in missing if k.startswith(("vision_model.", "visual_projection."))
                      and "position_ids" not in k]
    if vision_missing or unexpected:
        raise ValueError(f"checkpoint does not fit: missing {vision_missing[:4]}, unexpected {unexpected[:4]}")
    out = Path(out_dir)
    converted.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
    AutoImageProcessor.from_pretrained(base_path).save_pretrained(out)
    return out
