"""``MemoryRuntime``: the one object the trainer holds for the ``memory`` settings.

It checks what the config cannot know before the device is (swap needs CUDA and one
process), then turns a loaded LoRA transformer into one that fits: fp8 storage, block
swap and device placement, compiled blocks. During training it gives the context the
forward runs in (activation offload) and is told when a backward is over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from hv_tune.config import Config, MemoryConfig
from hv_tune.errors import ConfigError
from hv_tune.memory.fp8 import apply_fp8_storage, storage_bytes
from hv_tune.memory.swap import BlockSwapper, swap_indices
from hv_tune.models.base import ModelSpec, resolve_dtype


def human_bytes(n: float) -> str:
    """``1.23 GB`` / ``45.6 MB`` (binary units)."""
    return f"{n / 1024**3:.2f} GB" if n >= 1024**3 else f"{n / 1024**2:.1f} MB"


@dataclass
class MemoryRuntime:
    """Memory settings bound to a device. Build it with ``from_config``."""

    memory: MemoryConfig
    base_dtype: str
    device: torch.device
    swapper: BlockSwapper | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device | str, num_processes: int = 1) -> MemoryRuntime:
        """Check the device-dependent combinations; raises ``ConfigError`` before any model loads."""
        device = torch.device(device)
        mem = cfg.memory
        if mem.preset == "auto":
            raise ConfigError(
                "config key 'memory.preset': auto must be resolved before training: run `finetune.py train`, or "
                "load the config with hv_tune.training.plan.config_for_training"
            )
        if mem.blocks_to_swap and device.type != "cuda":
            raise ConfigError(
                f"config key 'memory.blocks_to_swap' ({mem.blocks_to_swap}) needs a CUDA GPU; this run is on "
                f"{device.type}, where the weights are in CPU memory already: set memory.blocks_to_swap=0"
            )
        if mem.blocks_to_swap and num_processes > 1:
            raise ConfigError(
                "config key 'memory.blocks_to_swap' is not supported with several processes (DDP keeps every "
                "parameter on its GPU); use one process, or memory.blocks_to_swap=0"
            )
        return cls(mem, cfg.model.base_dtype, device)

    # ------------------------------------------------------------------ set-up

    def prepare(self, spec: ModelSpec, transformer: nn.Module, compile_backend: str = "inductor") -> nn.Module:
        """fp8 storage, then swap or device placement, then compile.

        Call it on the LoRA transformer while it is still in CPU memory (after
        ``add_lora``): fp8 must see the adapter to leave it alone, and swapped weights must
        never be moved to the GPU as a whole.
        """
        self.apply_fp8(spec, transformer)
        self.place(spec, transformer)
        if self.memory.compile:
            self.compile(spec, transformer, compile_backend)
        if self.memory.checkpointing == "offload":
            self.notes.append("activation offload: checkpointed block inputs in pinned CPU memory")
        return transformer

    def apply_fp8(self, spec: ModelSpec, transformer: nn.Module) -> None:
        """With ``model.base_dtype: fp8``, store the frozen projections in float8 (also on meta)."""
        if self.base_dtype != "fp8":
            return
        compute = resolve_dtype("fp8", self.device)
        cast = apply_fp8_storage(transformer, spec.fp8_keep_patterns("transformer", transformer), compute)
        self.notes.append(f"fp8 storage: {len(cast)} linear layers")

    def place(self, spec: ModelSpec, transformer: nn.Module) -> None:
        """Move the model to the device, except the swapped blocks' frozen weights (pinned CPU)."""
        blocks = spec.transformer_blocks(transformer)
        n = self.memory.blocks_to_swap
        if n > len(blocks):
            raise ConfigError(f"config key 'memory.blocks_to_swap' is {n} but the transformer has {len(blocks)} blocks")
        if not n:
            transformer.to(self.device)
            return
        self.swapper = BlockSwapper(blocks, swap_indices(len(blocks), n), self.device)
        self.swapper.place(transformer)
        off = sum(storage_bytes(blocks[i]) for i in self.swapper.swapped)  # includes the (tiny) LoRA
        self.notes.append(f"block swap: {n} of {len(blocks)} blocks in pinned CPU memory ({human_bytes(off)})")

    def compile(self, spec: ModelSpec, transformer: nn.Module, backend: str = "inductor") -> None:
        blocks = spec.transformer_blocks(transformer)
        compile_blocks(blocks, backend)
        self.notes.append(f"torch.compile: {len(blocks)} blocks ({backend})")

    def summary(self) -> str:
        """One line for the log: what the memory settings did."""
        return "memory: " + ("; ".join(self.notes) if self.notes else "defaults (weights in the base dtype on the device)")

    # ------------------------------------------------------------------ per step

    @contextlib.contextmanager
    def forward_context(self) -> Iterator[OffloadSavedTensors | None]:
        """Wrap the forward: with ``checkpointing: offload`` tensors saved for backward go to CPU.

        With gradient checkpointing on, what autograd saves is mostly each block's inputs
        (``torch.utils.checkpoint`` stores them as saved tensors, so the hooks see them).
        """
        if self.memory.checkpointing != "offload":
            yield None
            return
        hooks = OffloadSavedTensors(self.device)
        with hooks:
            yield hooks

    def after_backward(self) -> None:
        """Call after every backward (micro-batch): releases what the swapper still holds."""
        if self.swapper is not None:
            self.swapper.after_backward()


class OffloadSavedTensors(torch.autograd.graph.saved_tensors_hooks):
    """Tensors autograd saves go to (pinned) CPU memory and come back when backward needs them.

    Like ``torch.autograd.graph.save_on_cpu(pin_memory=True)``, with two differences:
    parameters are kept as they are (copying frozen weights would only cost time), and
    the copy is always a separate tensor, also when the device is the CPU, so the CPU
    tests run the same pack/unpack path as a GPU. The GPU to CPU copy is asynchronous on
    the compute stream; the tensor's GPU memory is free once the copy has run.
    """

    def __init__(self, device: torch.device) -> None:
        self.packed_tensors = 0
        self.packed_bytes = 0
        self.packed_shapes: list[tuple[int, ...]] = []
        pin = torch.device(device).type == "cuda"

        def pack(t: torch.Tensor):
            if isinstance(t, nn.Parameter):
                return t
            copy = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, pin_memory=pin and t.is_cuda)
            copy.copy_(t, non_blocking=pin)
            self.packed_tensors += 1
            self.packed_bytes += t.numel() * t.element_size()
            self.packed_shapes.append(tuple(t.shape))
            return t.device, copy

        def unpack(packed):
            if isinstance(packed, torch.Tensor):
                return packed
            device, copy = packed
            return copy.to(device, non_blocking=pin)

        super().__init__(pack, unpack)


def compile_blocks(blocks: list[nn.Module], backend: str = "inductor") -> None:
    """``torch.compile`` every block in place (``nn.Module.compile`` keeps parameter names)."""
    for block in blocks:
        block.compile(backend=backend)
