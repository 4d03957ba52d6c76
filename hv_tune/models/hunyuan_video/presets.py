"""HunyuanVideo presets: LoRA targets and card-size memory settings (plain data, no imports).

LoRA presets map a name to regular expressions matched (fullmatch) against diffusers module
names (docs/lora-formats.md). Memory presets fill the config keys a YAML leaves out
(``memory.preset: 24gb``); the numbers and the arithmetic behind them are in docs/memory.md.
"""

from __future__ import annotations

_DOUBLE_ATTN = r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
_SINGLE_ATTN = r"single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)"
_DOUBLE_MLP = r"transformer_blocks\.\d+\.(ff|ff_context)\.net\.(0\.proj|2)"
_SINGLE_MLP = r"single_transformer_blocks\.\d+\.(proj_mlp|proj_out)"

LORA_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": (_DOUBLE_ATTN, _SINGLE_ATTN),
    "all-linear": (_DOUBLE_ATTN, _SINGLE_ATTN, _DOUBLE_MLP, _SINGLE_MLP),
}

# preset -> {"section.key": value}
PRESETS: dict[str, dict[str, object]] = {
    # fp8 blocks ~16 GB: swap 36 of the 40 single blocks (~6 GB) and offload the checkpoints.
    "16gb": {"model.base_dtype": "fp8", "memory.blocks_to_swap": 36, "memory.checkpointing": "offload"},
    # fp8 weights ~16.6 GB resident; offloading the block checkpoints (3.5 GB at 512x512x33) keeps headroom.
    "24gb": {"model.base_dtype": "fp8", "memory.blocks_to_swap": 0, "memory.checkpointing": "offload"},
    # bf16 weights ~25.6 GB; block checkpoints stay on the GPU (fastest).
    "48gb": {"model.base_dtype": "bf16", "memory.blocks_to_swap": 0, "memory.checkpointing": "full"},
    "80gb": {"model.base_dtype": "bf16", "memory.blocks_to_swap": 0, "memory.checkpointing": "full"},
}
