"""Captioning with any transformers image-to-text model: one class, three families.

- BLIP (`BlipForConditionalGeneration`): the prompt conditions the caption and stays in it
  ("a photography of a dog ..."), as the model card shows;
- BLIP-2 (`Blip2ForConditionalGeneration`, OPT or Flan-T5): instructed prompts ("Question: what is in
  this image? Answer:"); with a decoder-only LM the output echoes the prompt, so only new tokens are kept;
- VisionEncoderDecoder (ViT-GPT2, ...): the prompt becomes the decoder's first tokens.

The processor, tokenizer, generation and decoding are transformers' own; only the wiring differs.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from pipeline.config import CaptionConfig
from pipeline.models import blip_attention, turns
from pipeline.models.flags import candidate_flags
from pipeline.models.generation import beam_cache, generate_kwargs
from pipeline.models.loading import load_pretrained, pretrained_kwargs, setup_torch
from pipeline.models.pixels import Images, model_pixel_values, to_host


class HFCaptioner:
    """Batched captioning; `caption()` takes uint8 pixels already at the image processor's size."""

    def __init__(self, family: str, model: Any, image_processor: Any, tokenizer: Any, processor: Any,
                 cfg: CaptionConfig, device: str, dtype: Any):
        self.family, self.model, self.cfg, self.device, self.dtype = family, model, cfg, device, dtype
        self.image_processor, self.tokenizer, self.processor = image_processor, tokenizer, processor
        self.model_id = cfg.model
        self.revision = getattr(model.config, "_commit_hash", None) or cfg.revision
        self.gen_kwargs = generate_kwargs(cfg)
        lm = getattr(model.config, "text_config", None)
        self.decoder_only = family == "blip-2" and not getattr(lm, "is_encoder_decoder", False)
        # BLIP: SDPA in the vision tower, one cross-attention K/V per image for all its beams/samples
        # (blip_attention.py says why)
        self.shared_cross = blip_attention.install(model) if family == "blip" else None
        # What ends a caption and what pads it, as generate() sees them (BLIP's generate passes its text
        # config's [SEP] as EOS); the tokenizer's special ids are never words.
        gen = model.generation_config
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        if family == "blip":
            eos = [model.config.text_config.sep_token_id]
        self.eos = {int(e) for e in eos if e is not None}
        self.pad = model.config.text_config.pad_token_id if family == "blip" else gen.pad_token_id
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])

    def inputs(self, images: Images) -> dict[str, Any]:
        prompt = self.cfg.prompt
        out: dict[str, Any]
        if prompt and self.family == "blip-2":  # BLIP-2 prompts need the processor's <image> tokens
            out = dict(self.processor(images=list(to_host(images)), text=[prompt] * len(images), return_tensors="pt"))
        else:
            out = {"pixel_values": model_pixel_values(self.image_processor, images, self.device, self.dtype)}
            if prompt and self.family == "blip":
                out.update(self.tokenizer([prompt] * len(images), return_tensors="pt", return_token_type_ids=False))
        if self.family == "vision-encoder-decoder":
            if prompt:
                import torch

                start = self.model.config.decoder_start_token_id
                ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
                out["decoder_input_ids"] = torch.tensor([[start, *ids]] * len(images))
        return out

    def caption(self, pixels: Images) -> list[list[str]]:
        return self.caption_with_flags(pixels)[0]

    def caption_with_flags(self, pixels: Images) -> tuple[list[list[str]], list[list[list[str]]]]:
        """(candidates per image, best first; each candidate's flags: models/flags.py)."""
        import torch

        images = pixels
        with turns.TOKENIZER if self.cfg.prompt else nullcontext():  # a prompt is tokenised with the pixels
            raw = self.inputs(images)
        inputs = {k: v.to(self.device) for k, v in raw.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        extra = {}
        if self.family == "vision-encoder-decoder" and self.cfg.strategy == "beam" and self.cfg.cache == "dynamic":
            extra["past_key_values"] = beam_cache()  # no per-step copy of the cross-attention cache
        with turns.DEVICE:
            if self.cfg.strategy == "sample":
                torch.manual_seed(self.cfg.seed)  # same batch, same seed → same candidates
            session = self.shared_cross.session(len(images)) if self.shared_cross else nullcontext()
            with torch.inference_mode(), session:
                out = self.model.generate(**inputs, **self.gen_kwargs, **extra)
        if self.decoder_only and "input_ids" in inputs and out.shape[1] >= inputs["input_ids"].shape[1]:
            out = out[:, inputs["input_ids"].shape[1] :]  # the LM echoes its input: keep what it wrote
        decoder = self.tokenizer if self.family == "vision-encoder-decoder" else self.processor
        with turns.TOKENIZER:
            texts = [t.strip() for t in decoder.batch_decode(out, skip_special_tokens=True)]
        fed = inputs.get("decoder_input_ids" if self.family == "vision-encoder-decoder" else "input_ids")
        if self.family == "blip":  # BLIP generates after [DEC] and the prompt without its [CLS]/[SEP]
            lead = fed.shape[1] - 1 if fed is not None else 1
        elif self.family == "vision-encoder-decoder":
            lead = fed.shape[1] if fed is not None else 1
        else:  # BLIP-2: new tokens only (decoder-only: cut above) after special start/image tokens
            lead = 0
        flags = [candidate_flags(ids, text, self.eos, self.pad, self.special, self.cfg.min_new_tokens, self.cfg.prompt,
                                 self.family, lead) for ids, text in zip(out.tolist(), texts, strict=True)]
        n = len(texts) // len(images)
        return ([texts[i * n : (i + 1) * n] for i in range(len(images))],
                [flags[i * n : (i + 1) * n] for i in range(len(images))])


MODEL_CLASSES = {
    "blip": "BlipForConditionalGeneration",
    "blip-2": "Blip2ForConditionalGeneration",
    "vision-encoder-decoder": "VisionEncoderDecoderModel",
}


def load(family: str, path: str, cfg: CaptionConfig) -> HFCaptioner:
    """Weights straight to the device in the config's dtype: safetensors, no full fp32 copy in RAM
    (transformers 5 loads on the meta device, then fills each tensor from the memory-mapped file)."""
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    device, dtype = setup_torch(cfg)
    kw = pretrained_kwargs(cfg)
    cls = getattr(transformers, MODEL_CLASSES[family])
    model = load_pretrained(cls, path, cfg, device, dtype)
    if family == "vision-encoder-decoder":
        return HFCaptioner(family, model, AutoImageProcessor.from_pretrained(path, **kw),
                           AutoTokenizer.from_pretrained(path, **kw), None, cfg, device, dtype)
    processor = AutoProcessor.from_pretrained(path, **kw)
    return HFCaptioner(family, model, processor.image_processor, processor.tokenizer, processor, cfg, device, dtype)
