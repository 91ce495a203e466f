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
        import torch

        inputs = {k: v.to(self.device) for k, v in self.inputs(pixels).items()}
        for k in ("pixel_values",):
            inputs[k] = inputs[k].to(self.dtype)
        if self.cfg.strategy == "sample":
            torch.manual_seed(self.cfg.seed)  # same batch, same seed → same candidates
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.gen_kwargs)
        out = new_tokens(self.model, inputs, out)
        texts = [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]
        flags = [candidate_flags(ids, text, self.eos, self.pad, self.special, self.cfg.min_new_tokens, self.prompt,
                                 self.family) for ids, text in zip(out.tolist(), texts, strict=True)]
        n = len(texts) // len(pixels)
        return ([texts[i * n : (i + 1) * n] for i in range(len(pixels))],
                [flags[i * n : (i + 1) * n] for i in range(len(pixels))])


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
    return VLMCaptioner(family, model, load_processor(path, cfg), cfg, device, dtype)
