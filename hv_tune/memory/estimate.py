"""What one training step keeps in memory, measured by running it on the meta device.

The transformer's real forward, loss and backward run on ``meta`` tensors (shapes and dtypes,
no data, no memory), under three modes:

- ``LiveBytes`` (a ``TorchDispatchMode``) counts the bytes of every tensor storage the step
  allocates and frees them when PyTorch does (a finalizer on the storage), so its peak is the
  step's peak of live tensor bytes: activations saved for backward, checkpointed block inputs,
  the recomputed block, gradients in flight, temporaries. Views and in-place results share a
  storage and are counted once.
- ``SavedBytes`` (saved-tensor hooks) sums what autograd keeps between forward and backward
  (parameters excluded); with ``offload`` it drops what it saves and re-creates it when backward
  unpacks it, like ``OffloadSavedTensors`` does with pinned CPU memory.
- ``MetaKernels`` (a ``TorchFunctionMode``) makes meta behave like the training device where it
  would not: ``scaled_dot_product_attention`` on meta decomposes into the math path (the full
  [B, H, N, N] score matrix), but CUDA (memory-efficient / cuDNN) and CPU (flash) use fused
  kernels that keep only the output and the log-sum-exp, so the fused CPU kernel (which has a
  meta implementation) stands in. With ``autocast`` it applies autocast's casts where training
  under CUDA autocast would: linear layers and attention in the low-precision dtype, layer norm
  in float32 (PyTorch's autocast op lists).

The same hooks run on real CPU tensors in the tests, where the prediction is compared with the
bytes really saved and the CPU allocator's peak (``tests/test_plan.py``).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def storage_key(t: torch.Tensor) -> tuple[int, int]:
    """Identity and size of a tensor's storage (also on meta, where ``data_ptr`` is 0)."""
    st = t.untyped_storage()
    return st._cdata, st.nbytes()


class LiveBytes(TorchDispatchMode):
    """Live bytes of the tensor storages created while active; ``peak`` is their maximum.

    Args:
        existing: tensors that exist already (weights, inputs): ops that return views of them
            (``weight.t()``) allocate nothing, so their storages are never counted.
    """

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._existing = {storage_key(t)[0] for t in existing}
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        key, nbytes = storage_key(t)
        if key in self._seen or key in self._existing:
            return
        self._seen.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        # PyTorch keeps one Python object per storage while the storage lives: the finalizer
        # runs when the memory would be freed, not when this reference goes.
        weakref.finalize(t.untyped_storage(), self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Bytes of the (distinct) tensors autograd saves for backward, parameters excluded.

    Args:
        offload: drop each saved tensor and re-create it (same shape and dtype, on its device)
            when backward unpacks it: what activation offload leaves on the device.
        existing: tensors that exist already (weights, inputs); saved views of them
            (``weight.t()``) cost nothing and are not counted.
    """

    def __init__(self, offload: bool = False, existing: Iterable[torch.Tensor] = ()) -> None:
        existing_keys = {storage_key(t)[0] for t in existing}
        self.bytes = 0
        self.tensors = 0
        self._seen: set[int] = set()

        def pack(t: torch.Tensor) -> Any:
            key, nbytes = storage_key(t)
            if isinstance(t, nn.Parameter) or key in existing_keys:
                return t
            if offload or key not in self._seen:  # offload copies each saved tensor (ids get reused)
                self._seen.add(key)
                self.bytes += nbytes
                self.tensors += 1
            if offload:
                return t.shape, t.stride(), t.dtype, t.device
            return t

        def unpack(packed: Any) -> torch.Tensor:
            if isinstance(packed, torch.Tensor):
                return packed
            shape, stride, dtype, device = packed
            return torch.empty_strided(shape, stride, dtype=dtype, device=device)

        super().__init__(pack, unpack)


_LOW_PRECISION = {F.linear, torch._C._nn.linear}
_FLOAT32 = {F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm}


class MetaKernels(TorchFunctionMode):
    """Fused attention on meta, and autocast's casts for linear layers and norms (see module doc)."""

    def __init__(self, autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.autocast = autocast

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            # diffusers passes query/key/value by keyword
            call = dict(zip(("query", "key", "value"), args), **kwargs)
            if call["query"].is_meta:
                return self._attention(**call)
        if self.autocast is not None and func in _LOW_PRECISION:
            args = tuple(_cast(a, self.autocast) for a in args)
        elif self.autocast is not None and func in _FLOAT32:
            args = (_cast(args[0], torch.float32), *args[1:])
        return func(*args, **kwargs)

    def _attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
        q, k, v = query, key, value
        if self.autocast is not None:
            q, k, v = (_cast(x, self.autocast) for x in (q, k, v))
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            # [B, 1, 1, N] bool -> additive float mask of the same shape (as PyTorch converts it)
            attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)
        out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
        )
        return out


def _cast(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
        return x.to(dtype)
    return x


@dataclass
class StepProfile:
    """Bytes of one forward + backward (batch and bucket fixed by the inputs)."""

    #: distinct tensors autograd keeps from forward to backward (before offload), parameters excluded
    saved: int
    #: peak of the live tensor bytes allocated by the step (activations, checkpoints, recompute,
    #: temporaries), not counting the trainable parameters' gradients
    peak: int
    #: gradients of the trainable parameters (all alive when the optimizer steps)
    grads: int
    #: the batch's model inputs
    inputs: int

    @property
    def total(self) -> int:
        """Peak bytes of the step beyond the parameters: inputs + peak + all gradients."""
        return self.inputs + self.peak + self.grads


def profile_step(
    model: nn.Module,
    inputs: Mapping[str, Any],
    offload: bool = False,
    autocast: torch.dtype | None = None,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepProfile:
    """Run forward, an MSE loss and backward of ``model`` on ``inputs``, counting bytes.

    Works on meta tensors (the prediction) and on real CPU tensors (the check). Gradients of
    the trainable parameters are dropped as soon as they are accumulated and counted whole
    in ``grads``, so the peak does not depend on when the gradients arrive.

    Args:
        model: the transformer in training mode (LoRA added, checkpointing set as in training).
        inputs: keyword arguments of its forward; output ``[0]`` is the prediction.
        offload: drop what autograd saves until backward needs it (activation offload).
        autocast: emulate CUDA autocast to this dtype (see ``MetaKernels``).
        loss_fn: prediction -> scalar; default: MSE in float32 against a float32 target.
    """
    kernels = MetaKernels(autocast)
    if getattr(model, "is_gradient_checkpointing", False):
        # backward runs the recompute on the autograd engine's device thread, where the
        # function mode is not active: enter it there too (checkpoint's ``context_fn``)
        model.enable_gradient_checkpointing(functools.partial(
            torch.utils.checkpoint.checkpoint, use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), MetaKernels(autocast))))
    params = [p for p in model.parameters() if p.requires_grad]
    handles = [p.register_post_accumulate_grad_hook(_drop_grad) for p in params]
    loss_fn = loss_fn or _mse_loss
    existing = [*model.parameters(), *model.buffers(), *(t for t in inputs.values() if isinstance(t, torch.Tensor))]
    live, saved = LiveBytes(existing), SavedBytes(offload, existing)
    try:
        with kernels, live:
            with saved:
                pred = model(**inputs)[0]
            loss_fn(pred).backward()
            del pred
    finally:
        for h in handles:
            h.remove()
    grads = sum(p.numel() * p.element_size() for p in params)
    n_in = sum(storage_key(t)[1] for t in inputs.values() if isinstance(t, torch.Tensor))
    return StepProfile(saved=saved.bytes, peak=live.peak, grads=grads, inputs=n_in)


def _drop_grad(p: torch.Tensor) -> None:
    p.grad = None


def _mse_loss(pred: torch.Tensor) -> torch.Tensor:
    """``flow_matching_loss`` in shape: the float32 prediction against a float32 target."""
    target = torch.zeros(pred.shape, dtype=torch.float32, device=pred.device)
    return F.mse_loss(pred.float(), target)


#: blocks per list of the extrapolated profile's base run; then one more of each list in turn. Three,
#: because the step's peak is a maximum over its phases: with offload it grows from two blocks to three
#: and stays (the last block's recompute), while it grows by the same bytes per block without (the
#: saved activations); from three blocks on, each increment is the one every further block adds.
EXTRAPOLATE_FROM = 3


def profile_step_extrapolated(
    model: nn.Module, blocks: Iterable[nn.Module], inputs: Mapping[str, Any], **kwargs: Any
) -> StepProfile:
    """``profile_step`` of a model with many identical blocks, from runs with a few of them.

    Each ``ModuleList`` of ``blocks`` (HunyuanVideo: double and single blocks; 1.5: one list) is cut to
    ``EXTRAPOLATE_FROM`` blocks for a base run, then each list in turn to one more; every byte count of
    the step (saved, peak, gradients) grows by the same amount per block of a list, so the full model's
    profile is the base plus each list's increment times its remaining blocks. Blocks of a list have the
    same shapes, and the step's peak comes where it comes in the base run (the start of backward, or
    the last block's recompute), so this equals the full run's bytes (``tests/test_plan.py`` checks it
    against ``profile_step`` of a 6-block model). Lists too short to cut are run whole.

    Args:
        model: as for ``profile_step``. blocks: the spec's ``transformer_blocks``. kwargs: ``profile_step``'s.
    """
    ids = {id(b) for b in blocks}
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) and all(id(c) in ids for c in m)]
    cut = [m for m in lists if len(m) > EXTRAPOLATE_FROM + 1]
    if not cut:
        return profile_step(model, inputs, **kwargs)
    with _truncated(cut, [EXTRAPOLATE_FROM] * len(cut)):
        base = profile_step(model, inputs, **kwargs)
    fields = ("saved", "peak", "grads")
    total = {f: getattr(base, f) for f in fields}
    for i, m in enumerate(cut):
        counts = [EXTRAPOLATE_FROM + (j == i) for j in range(len(cut))]
        with _truncated(cut, counts):
            more = profile_step(model, inputs, **kwargs)
        for f in fields:
            total[f] += (getattr(more, f) - getattr(base, f)) * (len(m) - EXTRAPOLATE_FROM)
    return StepProfile(inputs=base.inputs, **total)


@contextlib.contextmanager
def _truncated(lists: list[nn.ModuleList], counts: list[int]):
    """Each ``ModuleList`` holds only its first ``count`` modules inside the block."""
    saved = [dict(m._modules) for m in lists]
    try:
        for m, n in zip(lists, counts):
            m._modules = dict(list(m._modules.items())[:n])
        yield
    finally:
        for m, modules in zip(lists, saved):
            m._modules = modules
