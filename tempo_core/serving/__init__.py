"""The serving wing, above the algorithm: many runs on one model.

scheduler.py  `Batcher`: runs advanced in ticks on the model's thread, their rows in one forward a tick
runner.py     the model runner: several runs' rows in one forward, each attending over its own cache and mask
graphed.py    that forward replayed from a CUDA graph of a fixed shape over the K/V store (on a GPU)
warmup.py     what a server does once at start (the chat template's head, the batch graphs)
limits.py     what one request may cost on a shared server, checked before a run
"""
