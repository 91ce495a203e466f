"""Two replacements for transformers' eager BLIP attention (BLIP-1 alone: its classes take no
`attn_implementation`; BLIP-2, CLIP and ViT get SDPA from transformers itself).

`sdpa_vision`: the vision tower's self-attention through `scaled_dot_product_attention` instead of
matmul-softmax-matmul, which writes and reads every [heads, 577, 577] score matrix (BLIP-base at batch 256
in bf16: 2 GB per layer, several times over) where a fused kernel keeps them on chip.

`SharedCrossAttention`: the caption decoder with one cross-attention K/V per image, shared by all of its
beams or samples (and the ITM text encoder's, shared by all texts scored against an image). Why not
transformers' own: its BLIP decoder caches cross-attention keys and values per *sequence*.
Beam search (and `num_return_sequences`) repeats each image's 577 embeddings for every beam, projects
K/V for each copy, and `EncoderDecoderCache.reorder_cache` index-copies all of them at every step although
a beam never leaves its image — for BLIP-base at batch 256 × 3 beams in bf16 that is 16 GB read and 16 GB
written per generated token to move identical rows, plus 3× the K/V reads of the attention itself.

Cross-attention has no causal mask, so the queries of an image's beams can attend as one longer query
against that image's single K/V: the result is the same (one SDPA call instead of eager matmul-softmax-
matmul), and the cache that beam search reorders holds self-attention only. ITM scores several texts
per image: each text row gathers its image's K/V instead of projecting them again from its own copy of
the 577 image embeddings.

`generate` itself stays transformers' (beam scoring, stopping, length penalty): `SharedCrossAttention`
only replaces each cross-attention's `forward` for the length of a `session()`; outside one — another
caller, a model we did not set up — the stock forward runs.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def install(model: Any) -> SharedCrossAttention:
    """Both on a BLIP captioner or ITM model: SDPA vision tower, shared cross-attention."""
    sdpa_vision(model)
    return SharedCrossAttention.of(model)


@contextmanager
def stock_attention(model: Any) -> Iterator[None]:
    """transformers' own attention for a while (the benchmarks run it side by side with ours)."""
    from transformers.models.blip.modeling_blip import BlipAttention
    from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

    ours = [m for m in model.modules() if isinstance(m, BlipAttention | BlipTextSelfAttention)]
    patched = [(m, m.__dict__.pop("forward")) for m in ours if "forward" in m.__dict__]
    try:
        yield
    finally:
        for m, forward in patched:
            m.forward = forward  # type: ignore[method-assign]


def sdpa_vision(model: Any) -> int:
    """Every `BlipAttention` of the model (vision tower) through SDPA; returns how many."""
    from transformers.models.blip.modeling_blip import BlipAttention

    modules = [m for m in model.modules() if isinstance(m, BlipAttention)]
    for attn in modules:
        attn.forward = types.MethodType(_vision_forward, attn)  # type: ignore[method-assign]
    return len(modules)


def _vision_forward(self: Any, hidden_states: Any, **kwargs: Any) -> tuple[Any, None]:
    import torch.nn.functional as F

    rows, tokens, width = hidden_states.shape
    qkv = self.qkv(hidden_states).view(rows, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
    return self.projection(out.transpose(1, 2).reshape(rows, tokens, width)), None


class SharedCrossAttention:
    """Installs shared cross-attention on a BLIP model's text decoder (captioning) or text encoder (ITM);
    `of(model)` installs it once per model and returns the same object after."""

    @classmethod
    def of(cls, model: Any) -> SharedCrossAttention:
        if not isinstance(getattr(model, "_capfilt_shared_cross", None), cls):
            model._capfilt_shared_cross = cls(model)
        return model._capfilt_shared_cross  # type: ignore[no-any-return]

    def __init__(self, model: Any):
        self.images = 0  # images of the running call; 0 outside a session
        self.rows: Any = None  # per query row, its image (a caller passing one embedding row per image)
        self.kv: dict[int, tuple[Any, Any, Any, int]] = {}  # layer → (K, V, mask, group) for that call
        self.modules = [m for name, m in model.named_modules() if name.endswith("crossattention.self")]
        if not self.modules:
            raise ValueError(f"{type(model).__name__}: its text model has no cross-attention layers")
        for i, attn in enumerate(self.modules):
            attn.forward = types.MethodType(_forward(self, i, attn.forward), attn)

    @contextmanager
    def session(self, images: int, rows: Any = None) -> Iterator[None]:
        """One call on `images` images: their K/V live until the call returns. Without `rows`, the
        encoder states come expanded as `generate` expands them (each image's rows in a run); with
        `rows` (a LongTensor: the image of each query row), one row per image, as ITM passes them."""
        self.images, self.rows, self.kv = images, rows, {}
        try:
            yield
        finally:
            self.images, self.rows, self.kv = 0, None, {}


def _forward(shared: SharedCrossAttention, index: int, stock: Any) -> Any:
    import torch.nn.functional as F

    def forward(self: Any, hidden_states: Any, attention_mask: Any = None, encoder_hidden_states: Any = None,
                encoder_attention_mask: Any = None, past_key_values: Any = None, **kwargs: Any) -> Any:
        if not shared.images or encoder_hidden_states is None:
            return stock(hidden_states, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                         encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, **kwargs)
        heads, dim = self.num_attention_heads, self.attention_head_size
        if index not in shared.kv:  # the call's first step: one K/V per image, not per beam or text
            group, rest = divmod(encoder_hidden_states.shape[0], shared.images)
            if rest or not group or (shared.rows is not None and group != 1):
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
        if shared.rows is not None:  # each text row against its image's K/V (gathered, not projected again)
            q = self.query(hidden_states).view(rows, steps, heads, dim).transpose(1, 2)
            r = shared.rows
            out = F.scaled_dot_product_attention(q, k[r], v[r], attn_mask=None if mask is None else mask[r])
            return out.transpose(1, 2).reshape(rows, steps, heads * dim), None
        # [images × group, steps, hidden] → [images, heads, group × steps, dim]: a view, rows are contiguous
        q = self.query(hidden_states).view(rows // group, group * steps, heads, dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(rows, steps, heads * dim), None

    return forward
