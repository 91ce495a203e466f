"""Model wrappers: plain transformers/torch, testable without Ray. One module per family."""
