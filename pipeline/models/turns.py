"""Two batches in a model actor at once, taking turns where they must.

A model stage's actor holds two batches (ray_adapter.pool: Ray Data's `max_concurrent_calls_per_actor=2`
on threads): while one batch is on the device, the other's CPU work runs — the arrow conversion, pixel
staging, the image processor, the host→device copy, reading the results back, token flags. They take turns
only where they must:

- DEVICE: one model call on the device at a time. The device is busy with either, and its memory is sized
  (batch_size, the OOM splitting of models/oom.py) for one batch's activations, not two.
- TOKENIZER: one batch in the tokenizer at a time. A fast tokenizer keeps its padding and truncation
  settings in its Rust object and sets them on every call: two threads in it raise "Already borrowed".

Why threads and not a prefetch queue of our own: Ray Data already hands an actor its next batch while it
works on the current one when the actor takes two calls, and a batch's result goes back the way it came;
a queue of our own would be a second scheduler inside its actor. Locks are taken in this order only:
TOKENIZER, then DEVICE. Sampling seeds the global RNG inside DEVICE, so a batch's candidates do not depend
on the other batch.
"""

from __future__ import annotations

import threading

DEVICE = threading.RLock()
TOKENIZER = threading.RLock()
