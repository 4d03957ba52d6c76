"""Fitting the transformer on one card: fp8 weights, block swap, activation offload, compile.

- ``fp8``: frozen weights stored in float8 via diffusers' layerwise casting hooks.
- ``swap``: ``BlockSwapper``, blocks whose weights live in pinned CPU memory.
- ``runtime``: ``MemoryRuntime``, what the trainer holds: set-up, forward context, after-backward.
- ``estimate``: one training step run on the meta device, counting live and saved bytes.

"Will it fit?" (``hv_tune.training.plan``) builds on these and on the cache's buckets; it lives
with training so this package never imports ``hv_tune.data`` (the data stage stores its text
encoder in fp8 through ``fp8``).
"""
