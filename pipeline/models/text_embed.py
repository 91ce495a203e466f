"""Sentence embeddings with sentence-transformers (all-MiniLM-L6-v2: mean pooling + normalisation, 384-d).

sentence-transformers reads the model's own module list (pooling, normalisation), so any of its models
works as its authors meant; the Kaggle "image to prompts" metric was computed with exactly this encode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.config import TextEmbedConfig
from pipeline.models import turns
from pipeline.models.loading import config_value, resolve_model, setup_torch


class TextEmbedder:
    def __init__(self, model: Any, cfg: TextEmbedConfig):
        self.model, self.cfg = model, cfg
        self.model_id = cfg.model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        with turns.TOKENIZER, turns.DEVICE:  # sentence-transformers tokenises and runs the model in one call
            out = self.model.encode(list(texts), batch_size=self.cfg.batch_size, convert_to_numpy=True,
                                    show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())


def load_text_embedder(cfg: TextEmbedConfig, storage_options: dict[str, Any] | None = None) -> TextEmbedder:
    from sentence_transformers import SentenceTransformer

    path = resolve_model(cfg.model, storage_options)
    device, dtype = setup_torch(cfg)
    model = SentenceTransformer(path, device=device, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                model_kwargs={"dtype": dtype})
    return TextEmbedder(model, cfg)


def text_embed_dim(cfg: TextEmbedConfig, storage_options: dict[str, Any] | None = None) -> int:
    """The embedding size, from the model's config (mean pooling keeps the hidden size)."""
    path = resolve_model(cfg.model, storage_options)
    hidden = config_value(path, cfg, ("hidden_size",))
    if isinstance(hidden, int):
        return hidden
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(resolve_model(cfg.model, storage_options), revision=cfg.revision)
    return int(conf.hidden_size)
