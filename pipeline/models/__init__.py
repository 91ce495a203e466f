"""Model wrappers: plain transformers/torch, testable without Ray. One module per family."""

import os

# transformers ≥ 5.25 swaps layers for kernels downloaded from the Hub at load time whenever the `kernels`
# package is installed (use_kernels defaults to on): code fetched at run time, which fails offline (every
# cluster without the Hub) and changes numerics under a pinned model. capfilt loads only the model's own
# code; USE_HUB_KERNELS=1 in the environment turns the Hub kernels back on.
os.environ.setdefault("USE_HUB_KERNELS", "0")
