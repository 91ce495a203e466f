"""Captioning with vision-language models: LLaVA, Florence-2, Qwen2-VL, SmolVLM.

All four sit behind `AutoModelForImageTextToText` and their processors; capfilt only wires them into the
captioner interface:
- the instruction (`caption.prompt`) goes through the processor's own chat template (LLaVA, Qwen2-VL,
  SmolVLM); Florence-2 takes a task token instead (`<MORE_DETAILED_CAPTION>` by default) and its processor
  turns it into its prompt;
- a batch is one `processor(images, texts)` call, padded on the left (decoder-only models generate after
  the last position), then `generate` with the job's options (beam, sampling, N candidates);
- a decoder-only model's output starts with its input: only the new tokens are decoded.

The processor does the pixels here (not `pixels.pixel_values`): it also expands each image's placeholder
into as many tokens as the image has patches, which for Qwen2-VL and SmolVLM depends on the image's size.
The decode stage already resized each image to the size the processor's own first resize makes
(decode/targets.py), so that resize is a no-op and the pixels are the processor's on the original image.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import CaptionConfig
from pipeline.models import turns
from pipeline.models.flags import candidate_flags
from pipeline.models.generation import generate_kwargs
from pipeline.models.loading import load_pretrained, pretrained_kwargs, setup_torch
from pipeline.models.pixels import Images, to_host
from pipeline.models.processors import images_only

# model_type → what the instruction is when the config gives none
FAMILIES = {
    "llava": "Describe this image in one sentence.",
    "florence2": "<MORE_DETAILED_CAPTION>",
    "qwen2_vl": "Describe this image in one sentence.",
    "smolvlm": "Describe this image in one sentence.",
}
CHAT = {"llava", "qwen2_vl", "smolvlm"}  # instructed through a chat template
REGION_TASK = "<REGION_TO_DESCRIPTION>"  # Florence-2's region caption task; the box follows as 4 location tokens


def processor_class(path: str, cfg: Any) -> Any:
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    kind = AutoConfig.from_pretrained(path, **pretrained_kwargs(cfg)).model_type
    return images_only(getattr(transformers, PROCESSOR_MAPPING_NAMES[kind]))


def load_processor(path: str, cfg: Any) -> Any:
    return processor_class(path, cfg).from_pretrained(path, **pretrained_kwargs(cfg))


class VLMCaptioner:
    """Batched instructed captioning; `caption()` takes uint8 pixels at the processor's first resize."""

    def __init__(self, family: str, model: Any, processor: Any, cfg: CaptionConfig, device: str, dtype: Any):
        self.family, self.model, self.processor, self.cfg = family, model, processor, cfg
        self.device, self.dtype = device, dtype
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.model_id = cfg.model
        self.revision = getattr(model.config, "_commit_hash", None) or cfg.revision
        self.gen_kwargs = generate_kwargs(cfg)
        self.prompt = cfg.prompt or FAMILIES[family]
        self.text = prompt_text(processor, family, self.prompt)
        # Region captions: Florence-2 from a box prompt; LLaVA from an Alpha-CLIP tower's alpha channel.
        self.alpha = int(getattr(getattr(model.config, "vision_config", None), "num_channels", 3)) == 4
        self.regions = family == "florence2" or self.alpha
        gen = model.generation_config
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        self.eos = {int(e) for e in eos if e is not None}
        self.pad = gen.pad_token_id
        self.special = set(getattr(self.tokenizer, "all_special_ids", []) or [])

    def inputs(self, images: Images) -> dict[str, Any]:
        return vlm_inputs(self.processor, self.family, list(to_host(images)), [self.text] * len(images))

    def caption(self, pixels: Images) -> list[list[str]]:
        return self.caption_with_flags(pixels)[0]

    def caption_with_flags(self, pixels: Images) -> tuple[list[list[str]], list[list[list[str]]]]:
        """(candidates per image, best first; each candidate's flags: models/flags.py)."""
        with turns.TOKENIZER:  # the processor tokenises the prompt with the images
            inputs = self.inputs(pixels)
        out = self._generate(inputs)
        with turns.TOKENIZER:
            texts = [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]
        flags = [candidate_flags(ids, text, self.eos, self.pad, self.special, self.cfg.min_new_tokens, self.prompt,
                                 self.family) for ids, text in zip(out.tolist(), texts, strict=True)]
        n = len(texts) // len(pixels)
        return ([texts[i * n : (i + 1) * n] for i in range(len(pixels))],
                [flags[i * n : (i + 1) * n] for i in range(len(pixels))])


    def _generate(self, inputs: dict[str, Any], alpha: Any = None) -> Any:
        """generate() on processor outputs → the new tokens; an Alpha-CLIP tower gets its alpha channel
        (`alpha`: (n, H, W) uint8 maps; None: the whole image)."""
        import torch

        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        if self.alpha:
            from pipeline.models.alpha_clip import with_alpha

            mask = None if alpha is None else torch.from_numpy(alpha).to(self.device, self.dtype) / 255.0
            inputs["pixel_values"] = with_alpha(inputs["pixel_values"], mask)
        with turns.DEVICE:
            if self.cfg.strategy == "sample":
                torch.manual_seed(self.cfg.seed)  # same batch, same seed → same candidates
            with torch.inference_mode():
                out = self.model.generate(**inputs, **self.gen_kwargs)
        return new_tokens(self.model, inputs, out)

    def caption_regions(self, pixels: Images, regions: list[tuple[list[list[float]], Any, tuple[int, int]]]) -> list[list[str]]:
        """Per image, a caption per region (the best candidate). `regions[i]`: the image's boxes in pixels of
        the shown image, their alpha maps at the processor's size (R, H, W), and the shown (width, height)."""
        images = list(to_host(pixels))
        repeat = [i for i, (boxes, _, _) in enumerate(regions) for _ in boxes]
        if self.family == "florence2":
            texts = [REGION_TASK + location_tokens(self.processor, b, size) for boxes, _, size in regions for b in boxes]
            with turns.TOKENIZER:
                inputs = vlm_inputs(self.processor, self.family, [images[i] for i in repeat], texts)
            out = self._generate(inputs)
        else:  # LLaVA with an Alpha-CLIP tower: the instruction, the region as the alpha channel
            import numpy as np

            alpha = np.concatenate([maps for _, maps, _ in regions])
            with turns.TOKENIZER:
                inputs = vlm_inputs(self.processor, self.family, [images[i] for i in repeat], [self.text] * len(repeat))
            out = self._generate(inputs, alpha)
        with turns.TOKENIZER:
            texts = [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]
        per = len(texts) // max(1, len(repeat))  # candidates per region: the best comes first
        best = iter(texts[::per] if per else [])
        return [[next(best) for _ in boxes] for boxes, _, _ in regions]


def location_tokens(processor: Any, box: list[float], size: tuple[int, int]) -> str:
    """A box in pixels of a (width, height) image → Florence-2's four location tokens, quantised by the
    processor's own post-processor (1,000 bins per side): `<loc_x0><loc_y0><loc_x1><loc_y1>`."""
    import torch

    q = processor.post_processor.quantize(torch.tensor([box], dtype=torch.float64), size=size)[0].tolist()
    return "".join(f"<loc_{int(v)}>" for v in q)


def prompt_text(processor: Any, family: str, prompt: str) -> str:
    """What the processor is given as text for every image: the chat template's rendering of one user
    turn (the image, then the instruction) with the assistant's turn opened; Florence-2's task token."""
    if family not in CHAT:
        return prompt
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return str(processor.apply_chat_template(turn, add_generation_prompt=True))


def vlm_inputs(processor: Any, family: str, images: list[Any], texts: list[str]) -> dict[str, Any]:
    """One processor call for a batch, padded on the left (generation continues from the last position)."""
    batch = [[im] for im in images] if family == "smolvlm" else images  # SmolVLM: a list of images per text
    kw: dict[str, Any] = {"padding": True, "padding_side": "left"} if family in CHAT else {}
    return dict(processor(images=batch, text=texts, return_tensors="pt", **kw))


def new_tokens(model: Any, inputs: dict[str, Any], out: Any) -> Any:
    """A decoder-only model's generate() returns its input ids first: only what it wrote after them."""
    if not model.config.is_encoder_decoder and "input_ids" in inputs:
        return out[:, inputs["input_ids"].shape[1] :]
    return out


def load(family: str, path: str, cfg: CaptionConfig) -> VLMCaptioner:
    """`AutoModelForImageTextToText` in the config's dtype, straight to the device (loading.load_pretrained)."""
    from transformers import AutoModelForImageTextToText

    device, dtype = setup_torch(cfg)
    model = load_pretrained(AutoModelForImageTextToText, path, cfg, device, dtype)
    if cfg.vision_tower:
        swap_vision_tower(model, cfg, device, dtype)
    return VLMCaptioner(family, model, load_processor(path, cfg), cfg, device, dtype)


def swap_vision_tower(model: Any, cfg: CaptionConfig, device: str, dtype: Any) -> None:
    """LLaVA's CLIP vision tower replaced by an Alpha-CLIP one (a `capfilt convert alpha-clip` directory),
    as Alpha-CLIP's authors run LLaVA: same width and patch grid, so the projector takes its features."""
    from transformers import CLIPVisionModel

    from pipeline.config import ConfigError
    from pipeline.models.loading import resolve_model

    tower: Any = CLIPVisionModel.from_pretrained(resolve_model(cfg.vision_tower or ""), dtype=dtype)
    tower = tower.to(device).eval()
    ours, theirs = tower.config, model.config.vision_config
    if ours.num_channels != 4 or (ours.hidden_size, ours.patch_size, ours.image_size) != (
            theirs.hidden_size, theirs.patch_size, theirs.image_size):
        raise ConfigError(f"config: caption.vision_tower: {cfg.vision_tower} (channels {ours.num_channels}, width "
                          f"{ours.hidden_size}, patch {ours.patch_size}, {ours.image_size} px) does not fit {cfg.model}'s "
                          f"tower (width {theirs.hidden_size}, patch {theirs.patch_size}, {theirs.image_size} px): it "
                          "needs an Alpha-CLIP of the same CLIP (ViT-L/14@336 for LLaVA-1.5)")
    model.model.vision_tower = tower
    model.config.vision_config = ours
