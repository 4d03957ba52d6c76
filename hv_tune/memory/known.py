"""Known constant values of meta tensors, so a forward that reads values can run on meta.

Some forwards branch on tensor values: HunyuanVideo 1.5 tests ``torch.all(image_embeds == 0)``
(text-to-video or image-to-video) and reorders its text tokens with boolean masks
(``text[mask]``, ``text[~mask]``), whose result shapes depend on how many tokens the mask keeps.
A meta tensor has no values, so both fail there ("Tensor.item() cannot be called on meta
tensors"). The plan knows these values: it builds its inputs as constants (masks all ones = every
token kept, image embeddings zero for text-to-video and a non-zero stand-in for image-to-video).

``KnownValues`` is a ``TorchDispatchMode`` that remembers which meta tensors are filled with one
constant (created by ``zeros`` / ``ones`` / ``full`` and friends while it is active) and carries
the constant through a short list of ops (dtype casts, views, ``eq`` / ``~`` / ``&``, ``all``).
Where the forward reads a value it answers from that: ``bool(t)`` / ``t.item()`` return the
constant, and a boolean index keeps all (constant true) or none (constant false) of its
positions, so ``x[mask]`` gets its real shape. Nothing else changes: the same module code runs,
and on real tensors the mode only passes ops through. A read of an unknown meta value still
fails, with the op named.

Limits: a constant stays known through views; an in-place op on a known tensor forgets it
(its views are not updated, which the forwards planned here never rely on).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

aten = torch.ops.aten

#: factories: the constant is an argument (or 0 / 1)
_ZEROS = {aten.zeros, aten.zeros_like, aten.new_zeros}
_ONES = {aten.ones, aten.ones_like, aten.new_ones}
_FULL = {aten.full: 1, aten.full_like: 1, aten.new_full: 2, aten.scalar_tensor: 0, aten.fill: 1}
#: ops whose outputs hold the input's constant (casts, copies, views, layout)
_SAME = {aten._to_copy, aten.clone, aten.view, aten._unsafe_view, aten.reshape, aten.expand, aten.select,
         aten.slice, aten.unsqueeze, aten.squeeze, aten.permute, aten.transpose, aten.t, aten.repeat, aten.unbind,
         aten.split, aten.split_with_sizes, aten.alias, aten.detach, aten.lift_fresh, aten.contiguous,
         aten._reshape_alias, aten.as_strided, aten.flatten, aten.unflatten, aten.cat, aten.stack}
#: elementwise ops evaluated on 0-dim CPU tensors holding the constants
_ELEMENTWISE = {aten.eq, aten.ne, aten.bitwise_not, aten.logical_not, aten.bitwise_and, aten.bitwise_or,
                aten.logical_and, aten.logical_or, aten.mul, aten.add, aten.sub, aten.neg, aten.abs}
#: reductions over a (non-empty) constant tensor
_REDUCE = {aten.all: bool, aten.any: bool, aten.amax: None, aten.amin: None, aten.max: None, aten.min: None}
#: value reads
_READS = {aten.is_nonzero, aten._local_scalar_dense, aten.item}
#: ops taking a list of (possibly boolean) indices as their second argument
_INDEXED = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_, aten._unsafe_index}
_HANDLED = (_ZEROS | _ONES | set(_FULL) | _SAME | _ELEMENTWISE | set(_REDUCE) | _READS | _INDEXED
            | {aten.nonzero})


class KnownValues(TorchDispatchMode):
    """Constant values of meta tensors, carried through a forward and read where it reads values."""

    def __init__(self) -> None:
        super().__init__()
        self.values: WeakTensorKeyDictionary = WeakTensorKeyDictionary()

    def value(self, t: torch.Tensor) -> Any:
        """The constant ``t`` holds, or None when unknown."""
        return self.values.get(t)

    def set(self, t: torch.Tensor, value: Any) -> torch.Tensor:
        """Declare that meta tensor ``t`` holds ``value`` everywhere; returns ``t``."""
        self.values[t] = value
        return t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet not in _HANDLED:  # fast path: most ops neither make, carry nor read a constant
            out = func(*args, **kwargs)
            if func._schema.is_mutable and args and isinstance(args[0], torch.Tensor):
                self.values.pop(args[0], None)  # changed in place: no longer known
            return out
        flat = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if not any(a.is_meta for a in flat) and packet not in _ZEROS | _ONES | set(_FULL):
            return func(*args, **kwargs)
        if packet in _READS:
            return self._read(func, args[0])
        if packet in _INDEXED and args[1] is not None:
            args = (args[0], [self._long_index(i) for i in args[1]], *args[2:])
        elif packet is aten.nonzero:
            return torch.empty((self._kept(args[0]), args[0].dim()), dtype=torch.long, device=args[0].device)
        out = func(*args, **kwargs)
        value = self._propagate(packet, func, args, kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.is_meta:
                if value is None or t.numel() == 0:
                    self.values.pop(t, None)
                else:
                    self.values[t] = _cast(value, t.dtype)
        return out

    # ------------------------------------------------------------------ reads

    def _read(self, func: Any, t: torch.Tensor) -> Any:
        if not t.is_meta:
            return func(t)
        value = self.values.get(t)
        if value is None:
            raise RuntimeError(f"{func}: the forward reads the value of a meta tensor {tuple(t.shape)} "
                               "that the plan does not know")
        return bool(value) if func.overloadpacket is aten.is_nonzero else value

    def _kept(self, mask: torch.Tensor) -> int:
        value = self.values.get(mask)
        if value is None:
            raise RuntimeError(f"a boolean index {tuple(mask.shape)} on meta whose values the plan does not know")
        return mask.numel() if value else 0

    def _long_index(self, index: torch.Tensor | None) -> Any:
        """A constant boolean mask as the equivalent long index (all or none of its positions)."""
        if index is None or not index.is_meta or index.dtype not in (torch.bool, torch.uint8):
            return index
        if index.dim() != 1:
            raise RuntimeError(f"a {index.dim()}-d boolean index on meta: only 1-d masks are supported")
        return torch.empty(self._kept(index), dtype=torch.long, device=index.device)

    # ------------------------------------------------------------------ propagation

    def _propagate(self, packet: Any, func: Any, args: tuple, kwargs: dict) -> Any:
        if packet in _ZEROS:
            return 0
        if packet in _ONES:
            return 1
        if packet in _FULL:
            return _scalar(args[_FULL[packet]]) if len(args) > _FULL[packet] else None
        tensors = [a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)]
        values = [self.values.get(t) for t in tensors]
        if not tensors or any(v is None for v in values):
            return None
        if packet in _SAME:
            return values[0] if len(set(values)) == 1 else None
        if packet in _REDUCE:
            kind = _REDUCE[packet]
            return kind(values[0]) if kind else values[0]
        if packet in _ELEMENTWISE:
            def small(a: Any) -> Any:
                if isinstance(a, torch.Tensor):
                    return torch.tensor(self.values[a], dtype=a.dtype)
                return a
            try:
                return func(*[small(a) for a in args], **kwargs).item()
            except (RuntimeError, TypeError):
                return None
        return None


def _scalar(x: Any) -> Any:
    return x if isinstance(x, (bool, int, float)) else None


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if dtype == torch.bool:
        return bool(value)
    return float(value) if dtype.is_floating_point else int(value)
