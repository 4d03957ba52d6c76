"""Card-size memory presets for HunyuanVideo 1.5 (8.3B; plain data, no imports).

Sizes (meta model of the released config): 54 dual-stream blocks of 151M parameters each
(8.16B of the 8.33B). A block is ~176 MB under fp8 storage (its adaLN ``norm1*.linear``,
25M parameters, stay bf16) and ~302 MB in bf16; all blocks: ~9.5 GB fp8, ~16.3 GB bf16.
Block swap moves whole blocks to the CPU (``memory.blocks_to_swap`` of the 54).
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    # fp8; 36 of 54 blocks swapped (~6.3 GB on the CPU), checkpoints offloaded: ~3.2 GB of blocks resident
    "12gb": {"model.base_dtype": "fp8", "memory.blocks_to_swap": 36, "memory.checkpointing": "offload"},
    # fp8; 18 blocks swapped (~3.2 GB), checkpoints offloaded
    "16gb": {"model.base_dtype": "fp8", "memory.blocks_to_swap": 18, "memory.checkpointing": "offload"},
    # fp8 ~9.5 GB resident; offloaded checkpoints leave room for 480p x 121 frames
    "24gb": {"model.base_dtype": "fp8", "memory.blocks_to_swap": 0, "memory.checkpointing": "offload"},
    # bf16 ~16.7 GB; checkpoints stay on the GPU (fastest)
    "48gb": {"model.base_dtype": "bf16", "memory.blocks_to_swap": 0, "memory.checkpointing": "full"},
    "80gb": {"model.base_dtype": "bf16", "memory.blocks_to_swap": 0, "memory.checkpointing": "full"},
}
