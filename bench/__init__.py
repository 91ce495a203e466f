"""Benchmarks, side by side in one run: `python -m bench` (make bench) / `--device cuda` (make bench-gpu).

CPU (default): realistic web JPEGs (500–1600 px, from real photos) in webdataset shards, then
  - decode: PIL full decode + the HF image processor  vs  capfilt's decode (fast path), per core,
    with the embedding fidelity of the two paths (cosine of a BLIP vision tower's pooled output);
  - captioning, for a ~16M-parameter BLIP at 384 px ("small") and the tiny test BLIP:
    the seeds' per-image loop (open, processor, generate, decode)  vs  the model alone, batched, on
    pre-decoded tensors  vs  the whole capfilt pipeline (read, decode, model, write) on Ray Data,
    all with the same threads, batch size and generation settings;
  - peak memory of the pipeline (driver + Ray workers, sum of PSS and of RSS) at N and 10×N images.
GPU (`--device cuda`): full-size configs (BLIP base/large, CLIP ViT-B/32, ViT-L/14; random weights,
  no download), bf16: model-only img/s, then the real jobs with the presets of configs/ end to end
  (img/s, GPU utilisation sampled with NVML, busy time per Ray Data operator).
Prints a table and writes JSON (`--out`).
"""
