"""BLIP's caption decoder with one cross-attention K/V per image, shared by all of its beams or samples.

Why not transformers' own: its BLIP decoder caches cross-attention keys and values per *sequence*.
Beam search (and `num_return_sequences`) repeats each image's 577 embeddings for every beam, projects
K/V for each copy, and `EncoderDecoderCache.reorder_cache` index-copies all of them at every step although
a beam never leaves its image — for BLIP-base at batch 256 × 3 beams in bf16 that is 16 GB read and 16 GB
written per generated token to move identical rows, plus 3× the K/V reads of the attention itself.

Cross-attention has no causal mask, so the queries of an image's beams can attend as one longer query
against that image's single K/V: the result is the same (one SDPA call instead of eager matmul-softmax-
matmul), and the cache that beam search reorders holds self-attention only.

`generate` itself stays transformers' (beam scoring, stopping, length penalty): `SharedCrossAttention`
only replaces each cross-attention's `forward` for the length of a `session()`; outside one — another
caller, a model we did not set up — the stock forward runs.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class SharedCrossAttention:
    """Installs shared cross-attention on a `BlipForConditionalGeneration`'s text decoder; `of(model)`
    installs it once per model and returns the same object after."""

    @classmethod
    def of(cls, model: Any) -> SharedCrossAttention:
        if not isinstance(getattr(model, "_capfilt_shared_cross", None), cls):
            model._capfilt_shared_cross = cls(model)
        return model._capfilt_shared_cross  # type: ignore[no-any-return]

    def __init__(self, model: Any):
        self.images = 0  # images of the running generate call; 0 outside a session
        self.kv: dict[int, tuple[Any, Any, Any, int]] = {}  # layer → (K, V, mask, group) for that call
        self.modules = [layer.crossattention.self for layer in model.text_decoder.bert.encoder.layer
                        if hasattr(layer, "crossattention")]
        if not self.modules:
            raise ValueError(f"{type(model).__name__}: its text decoder has no cross-attention layers")
        for i, attn in enumerate(self.modules):
            attn.forward = types.MethodType(_forward(self, i, attn.forward), attn)

    @contextmanager
    def session(self, images: int) -> Iterator[None]:
        """One `generate` call on `images` images: its K/V live until the call returns."""
        self.images, self.kv = images, {}
        try:
            yield
        finally:
            self.images, self.kv = 0, {}


def _forward(shared: SharedCrossAttention, index: int, stock: Any) -> Any:
    import torch.nn.functional as F

    def forward(self: Any, hidden_states: Any, attention_mask: Any = None, encoder_hidden_states: Any = None,
                encoder_attention_mask: Any = None, past_key_values: Any = None, **kwargs: Any) -> Any:
        if not shared.images or encoder_hidden_states is None:
            return stock(hidden_states, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                         encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, **kwargs)
        heads, dim = self.num_attention_heads, self.attention_head_size
        if index not in shared.kv:  # the call's first step: one K/V per image, not per beam
            group, rest = divmod(encoder_hidden_states.shape[0], shared.images)
            if rest or not group:
                raise ValueError(f"cross-attention: {encoder_hidden_states.shape[0]} rows of image embeddings "
                                 f"for a session of {shared.images} images")
            enc = encoder_hidden_states[::group]  # generate repeats rows in place (repeat_interleave)
            k = self.key(enc).view(enc.shape[0], -1, heads, dim).transpose(1, 2)
            v = self.value(enc).view(enc.shape[0], -1, heads, dim).transpose(1, 2)
            mask = encoder_attention_mask if encoder_attention_mask is not None else attention_mask
            if mask is not None:  # a padding mask over the image tokens: the same for every query
                mask = mask[::group, :, :1]
            shared.kv[index] = (k, v, mask, group)
        k, v, mask, group = shared.kv[index]
        rows, steps = hidden_states.shape[:2]
        # [images × group, steps, hidden] → [images, heads, group × steps, dim]: a view, rows are contiguous
        q = self.query(hidden_states).view(rows // group, group * steps, heads, dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(rows, steps, heads * dim), None

    return forward
