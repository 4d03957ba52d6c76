"""Block swap: chosen transformer blocks keep their frozen weights in pinned CPU memory.

A swapped block's weights are copied to the GPU on a side CUDA stream one block ahead of
their use, and dropped again once the block is done. Frozen weights never change, so
nothing is copied back: "offloading" is pointing the parameters at their CPU master copy
again. LoRA parameters (trainable) stay on the GPU throughout.

Schedule (blocks in execution order, ``prefetch`` = start a copy, ``activate`` = wait for
it and point the parameters at it, ``release`` = point them back at the CPU copy):

- forward: before block i runs, activate i if swapped and prefetch the next swapped
  block; after it runs, release i. Gradient checkpointing keeps nothing of a block's
  weights after its forward, which is why swapping requires it. The last swapped block
  stays on the GPU when gradients follow, because backward needs it first.
- backward: the block's outputs pass through ``_BackwardStart``, an identity whose
  backward runs right before the block's own backward (and so before the checkpoint
  recomputes it): it activates the block and prefetches the previous swapped block. The
  block's inputs pass through ``_BackwardDone``, whose backward runs once the block's
  backward is complete: it releases the block. A swapped block whose inputs need no
  gradient (the first block) is released by ``after_backward``.

Everything goes through PyTorch's public module-hook API; nothing in diffusers is patched.
On a CPU "device" the same schedule runs with plain copies instead of streams, which is
what the tests exercise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class _BackwardStart(torch.autograd.Function):
    """Identity on a block's outputs; backward tells the swapper the block's backward begins."""

    @staticmethod
    def forward(ctx, swapper: BlockSwapper, index: int, *tensors: torch.Tensor):
        ctx.swapper, ctx.index = swapper, index
        ctx.set_materialize_grads(False)
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.swapper.on_backward_start(ctx.index)
        return (None, None, *grads)


class _BackwardDone(torch.autograd.Function):
    """Identity on a block's inputs; backward tells the swapper the block's backward is over."""

    @staticmethod
    def forward(ctx, swapper: BlockSwapper, index: int, *tensors: torch.Tensor):
        ctx.swapper, ctx.index = swapper, index
        ctx.set_materialize_grads(False)
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.swapper.on_backward_done(ctx.index)
        return (None, None, *grads)


def _wrap(fn: type[torch.autograd.Function], swapper: BlockSwapper, index: int, values: list[Any]) -> list[Any]:
    """``values`` with the tensors that require grad passed through ``fn`` (others untouched)."""
    at = [k for k, v in enumerate(values) if isinstance(v, torch.Tensor) and v.requires_grad]
    if not at:
        return values
    wrapped = fn.apply(swapper, index, *(values[k] for k in at))
    out = list(values)
    for k, t in zip(at, wrapped):
        out[k] = t
    return out


class BlockSwapper:
    """Streams the frozen weights of ``swapped`` blocks between CPU memory and ``device``.

    Args:
        blocks: the model's repeated blocks in execution order (``ModelSpec.transformer_blocks``).
        swapped: indices into ``blocks`` whose frozen weights live off the device.
        device: the compute device. With a CPU device the "device copy" is a second CPU
            tensor and copies are synchronous (the test path).
        record: keep a list of ``(event, block)`` moves in ``self.events`` (tests, debugging).
    """

    def __init__(self, blocks: Sequence[nn.Module], swapped: Sequence[int], device: torch.device | str,
                 record: bool = False) -> None:
        self.blocks = list(blocks)
        self.swapped = sorted(set(swapped))
        if any(i < 0 or i >= len(self.blocks) for i in self.swapped):
            raise ValueError(f"swapped block indices {self.swapped} out of range for {len(self.blocks)} blocks")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.events: list[tuple[str, int]] | None = [] if record else None
        self._tensors: dict[int, list[torch.Tensor]] = {}
        self._masters: dict[int, list[torch.Tensor]] = {}
        self._pending: dict[int, tuple[list[torch.Tensor], Any]] = {}
        self._resident: set[int] = set()
        self._recompute_next: int | None = None
        self._recomputing: int | None = None
        self._handles: list[Any] = []
        for i in self.swapped:
            self._offload_block(i)
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(i), with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._post_hook(i)))

    # ------------------------------------------------------------------ placement

    def _offload_block(self, i: int) -> None:
        """Make CPU master copies (pinned on CUDA) of block i's frozen tensors; LoRA goes to the device."""
        seen: set[int] = set()
        tensors, masters = [], []
        for t in [*self.blocks[i].parameters(), *self.blocks[i].buffers()]:
            if id(t) in seen:
                continue
            seen.add(id(t))
            if t.requires_grad:
                t.data = t.data.to(self.device)
                continue
            master = t.data.to("cpu")
            t.data = master.pin_memory() if self.cuda else master  # pinned: async copies to the GPU
            tensors.append(t)
            masters.append(t.data)
        self._tensors[i], self._masters[i] = tensors, masters

    def offloaded_ids(self) -> set[int]:
        """``id()`` of every tensor whose home is CPU memory (``place`` leaves them alone)."""
        return {id(t) for ts in self._tensors.values() for t in ts}

    def place(self, model: nn.Module) -> nn.Module:
        """Move everything of ``model`` except the swapped frozen tensors to the device."""
        keep = self.offloaded_ids()
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in keep:
                t.data = t.data.to(self.device)
        return model

    def on_device(self, i: int) -> bool:
        """Whether swapped block i's frozen tensors currently point at device copies."""
        return all(t.data_ptr() != m.data_ptr() for t, m in zip(self._tensors[i], self._masters[i]))

    # ------------------------------------------------------------------ moves

    def _log(self, event: str, i: int) -> None:
        if self.events is not None:
            self.events.append((event, i))

    def _copy(self, i: int) -> tuple[list[torch.Tensor], Any]:
        if not self.cuda:
            return [m.clone() for m in self._masters[i]], None
        with torch.cuda.stream(self.stream):
            copies = [m.to(self.device, non_blocking=True) for m in self._masters[i]]
            done = torch.cuda.Event()
            done.record(self.stream)
        return copies, done

    def _prefetch(self, i: int | None) -> None:
        if i is None or i in self._resident or i in self._pending:
            return
        self._pending[i] = self._copy(i)
        self._log("prefetch", i)

    def _activate(self, i: int) -> None:
        if i in self._resident:
            return
        if i not in self._pending:
            self._log("load", i)  # not prefetched: this copy does not overlap compute
            self._pending[i] = self._copy(i)
        copies, done = self._pending.pop(i)
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for c in copies:
                c.record_stream(stream)  # allocated on the copy stream, used on this one
        for t, c in zip(self._tensors[i], copies):
            t.data = c
        self._resident.add(i)
        self._log("activate", i)

    def _release(self, i: int) -> None:
        if i not in self._resident:
            return
        for t, m in zip(self._tensors[i], self._masters[i]):
            t.data = m
        self._resident.discard(i)
        self._log("release", i)

    def _neighbour(self, i: int, step: int) -> int | None:
        """The nearest swapped block after (step=1) or before (step=-1) block i."""
        later = [j for j in self.swapped if (j - i) * step > 0]
        return (min(later) if step > 0 else max(later)) if later else None

    # ------------------------------------------------------------------ hooks

    def _pre_hook(self, i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            if self._recompute_next == i:  # the checkpoint recomputes block i inside backward
                self._recompute_next, self._recomputing = None, i
                if i in self._tensors:
                    self._activate(i)
                return None
            self._recomputing = None
            if i == 0:
                self.reset()
            if i in self._tensors:
                self._activate(i)
            self._prefetch(self._neighbour(i, 1))
            if i in self._tensors and torch.is_grad_enabled():
                keys = list(kwargs)
                values = _wrap(_BackwardDone, self, i, [*args, *(kwargs[k] for k in keys)])
                return tuple(values[: len(args)]), dict(zip(keys, values[len(args):]))
            return None

        return hook

    def _post_hook(self, i: int):
        def hook(module: nn.Module, args: tuple, output: Any):
            if self._recomputing == i:
                self._recomputing = None
                return None  # the backward of this block still needs its weights
            grads_follow = False
            if torch.is_grad_enabled():
                outs = list(output) if isinstance(output, (tuple, list)) else [output]
                grads_follow = any(isinstance(o, torch.Tensor) and o.requires_grad for o in outs)
                if grads_follow:
                    outs = _wrap(_BackwardStart, self, i, outs)
                    output = type(output)(outs) if isinstance(output, (tuple, list)) else outs[0]
            if i in self._tensors and not (grads_follow and i == self.swapped[-1]):
                self._release(i)
            return output

        return hook

    def on_backward_start(self, i: int) -> None:
        """Block i's output gradients are ready: its weights must be on the device now."""
        self._recompute_next = i
        if i in self._tensors:
            self._activate(i)
        self._prefetch(self._neighbour(i, -1))

    def on_backward_done(self, i: int) -> None:
        """Block i's backward is over (its input gradients exist)."""
        self._release(i)

    def reset(self) -> None:
        """Release every swapped block and drop unused prefetches."""
        for i in sorted(self._resident):
            self._release(i)
        self._pending.clear()
        self._recompute_next = self._recomputing = None

    def after_backward(self) -> None:
        """Call after each backward: frees what the backward could not (e.g. the first block)."""
        self.reset()

    def remove(self) -> None:
        """Take the hooks off and bring every block back to the device (weights included)."""
        for h in self._handles:
            h.remove()
        self.reset()
        for i in self.swapped:
            for t in self._tensors[i]:
                t.data = t.data.to(self.device)
        self._tensors.clear()
        self._masters.clear()


def swap_indices(num_blocks: int, blocks_to_swap: int) -> list[int]:
    """The last ``blocks_to_swap`` blocks in execution order (HunyuanVideo: single blocks first)."""
    return list(range(num_blocks - blocks_to_swap, num_blocks))
