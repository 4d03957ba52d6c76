"""What HunyuanVideo and HunyuanVideo 1.5 share: ComfyUI's names (it runs both on its HunyuanVideo
model), name templates with block indices, LoRA prefixes, and what tells both from look-alike families.

Both families' ``keys.py`` build their key layout (``hv_tune.models.base.KeyLayout``) on this module;
neither imports the other's folder. Pure string logic, no diffusers import.
"""

from __future__ import annotations

import re

#: LoRA key prefix per file format (diffusers' loader, ComfyUI's original names, kohya/musubi)
LORA_PREFIXES = {"diffusers": "transformer.", "comfyui": "diffusion_model.", "kohya": "lora_unet_"}
#: double and single blocks in either layout (group 1: the block index), what look-alike block counts read
BLOCK_PATTERNS = (r"^(?:double_blocks|transformer_blocks)\.(\d+)\.", r"^(?:single_blocks|single_transformer_blocks)\.(\d+)\.")

# ComfyUI's internal module names (its HunyuanVideo model reuses Flux's layers), where they
# differ from Tencent's: read in ComfyUI's ``comfy/ldm/hunyuan_video/model.py`` and
# ``comfy/ldm/flux/layers.py`` (MLPEmbedder ``in_layer``/``out_layer``, Modulation ``lin``,
# SelfAttention ``qkv``/``proj``, MLPs as ``Sequential`` indices 0/2).
COMFY_INTERNAL: dict[str, str] = {
    "double_blocks.{i}.img_attn_qkv": "double_blocks.{i}.img_attn.qkv",
    "double_blocks.{i}.img_attn_proj": "double_blocks.{i}.img_attn.proj",
    "double_blocks.{i}.txt_attn_qkv": "double_blocks.{i}.txt_attn.qkv",
    "double_blocks.{i}.txt_attn_proj": "double_blocks.{i}.txt_attn.proj",
    "double_blocks.{i}.img_mlp.fc1": "double_blocks.{i}.img_mlp.0",
    "double_blocks.{i}.img_mlp.fc2": "double_blocks.{i}.img_mlp.2",
    "double_blocks.{i}.txt_mlp.fc1": "double_blocks.{i}.txt_mlp.0",
    "double_blocks.{i}.txt_mlp.fc2": "double_blocks.{i}.txt_mlp.2",
    "double_blocks.{i}.img_mod.linear": "double_blocks.{i}.img_mod.lin",
    "double_blocks.{i}.txt_mod.linear": "double_blocks.{i}.txt_mod.lin",
    "single_blocks.{i}.modulation.linear": "single_blocks.{i}.modulation.lin",
    "txt_in.individual_token_refiner.blocks.{i}.self_attn_qkv": "txt_in.individual_token_refiner.blocks.{i}.self_attn.qkv",
    "txt_in.individual_token_refiner.blocks.{i}.self_attn_proj": "txt_in.individual_token_refiner.blocks.{i}.self_attn.proj",
    "txt_in.individual_token_refiner.blocks.{i}.mlp.fc1": "txt_in.individual_token_refiner.blocks.{i}.mlp.0",
    "txt_in.individual_token_refiner.blocks.{i}.mlp.fc2": "txt_in.individual_token_refiner.blocks.{i}.mlp.2",
    "time_in.mlp.0": "time_in.in_layer",
    "time_in.mlp.2": "time_in.out_layer",
    "guidance_in.mlp.0": "guidance_in.in_layer",
    "guidance_in.mlp.2": "guidance_in.out_layer",
    "txt_in.t_embedder.mlp.0": "txt_in.t_embedder.in_layer",
    "txt_in.t_embedder.mlp.2": "txt_in.t_embedder.out_layer",
    "txt_in.c_embedder.linear_1": "txt_in.c_embedder.in_layer",
    "txt_in.c_embedder.linear_2": "txt_in.c_embedder.out_layer",
}

# ComfyUI's LoRA key map for HunyuanVideo (``comfy/lora.py`` ``model_lora_keys_unet``, the
# "diffusion-pipe lora format" branch): each internal weight name, with these substrings
# replaced in this order, is accepted under the ``diffusion_model.`` and ``transformer.``
# prefixes. For the blocks this gives Tencent's names; the embedders keep ComfyUI's names.
COMFY_LORA_RENAMES = (
    ("_mod.lin.", "_mod.linear."),
    ("_attn.qkv.", "_attn_qkv."),
    ("_attn.proj.", "_attn_proj."),
    ("mlp.0.", "mlp.fc1."),
    ("mlp.2.", "mlp.fc2."),
    (".modulation.lin.", ".modulation.linear."),
)


def comfy_lora_name(internal: str) -> str:
    """The module name ComfyUI's HunyuanVideo LoRA key map gives a ComfyUI-internal module."""
    name = internal + "."
    for old, new in COMFY_LORA_RENAMES:
        name = name.replace(old, new)
    return name[:-1]


def name_pattern(template: str, sep: str = ".") -> re.Pattern[str]:
    """Regex for a name template with ``{i}`` block indices (``sep`` replaces the dots)."""
    escaped = re.escape(template.replace(".", sep)).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(escaped)


def fill_name(template: str, match: re.Match[str]) -> str:
    """``template`` with ``{i}`` replaced by the block index ``match`` (of a ``name_pattern``) found."""
    return template.replace("{i}", match.group("i")) if "{i}" in template else template


#: fragments of module names (diffusers or original) only HunyuanVideo has: the token refiner and the
#: text/time/guidance embedders. A LoRA reaching one of them is HunyuanVideo's, whatever its block counts.
OWN_MODULE_MARKERS = ("individual_token_refiner", "txt_in.", "context_embedder.", "time_in.mlp", "guidance_in.mlp")
#: (double, single) block counts of families whose block names are HunyuanVideo's in ComfyUI
#: (Flux: 19 double + 38 single blocks; HunyuanVideo has 20 + 40)
LOOKALIKE_BLOCKS = {"Flux": (19, 38)}
