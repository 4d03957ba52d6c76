"""Fitting the transformer on one card: fp8 weights, block swap, activation offload, compile.

- ``presets``: card-size presets (plain data; imported by ``hv_tune.config``, so no torch here).
- ``fp8``: frozen weights stored in float8 via diffusers' layerwise casting hooks.
- ``swap``: ``BlockSwapper``, blocks whose weights live in pinned CPU memory.
- ``runtime``: ``MemoryRuntime``, what the trainer holds: set-up, forward context, after-backward.
- ``estimate``: one training step run on the meta device, counting live and saved bytes.
- ``plan``: "will it fit?": predicted peak GPU memory per preset, ``memory.preset: auto``.
"""
