"""Weight deltas of the adapter types beyond LoRA (DoRA, LoKr, LoHa): pure functions, no key names.

Every type's update of a linear layer ``W [out, in]`` (docs/lora-formats.md, "Adapter types"):

- LoRA (``lora_math.LoraModule``): ``dW = (alpha / r) * up @ down``.
- DoRA (PEFT ``LoraConfig(use_dora=True)``, ``peft/tuners/lora/dora.py``): the adapted weight is
  ``W' = m * V / ||V||`` with ``V = W + (alpha / r) * up @ down`` and ``||V||`` the L2 norm of each
  *output row* of ``V`` (PEFT: ``torch.linalg.norm(weight, dim=1)``), ``m`` the trained magnitude
  ``[out]``. LyCORIS's ``wd_on_out=True`` (``dora_scale`` ``[out, 1]``) is the same formula; its
  default ``wd_on_out=False`` (``dora_scale`` ``[1, in]``, norm of each input column) is another one.
- LoKr (PEFT ``LoKrConfig``, ``peft/tuners/lokr/layer.py``; LyCORIS ``functional/lokr.py``):
  ``dW = scale * kron(w1, w2)``, each factor full or ``a @ b``. PEFT's scale is always ``alpha / r``;
  LyCORIS (and ComfyUI, musubi-tuner, which follow it) use ``alpha / r`` when a factor is decomposed
  and **1** when both are full (alpha is ignored there). A missing alpha means scale 1 in LyCORIS.
- LoHa (PEFT ``LoHaConfig``, ``peft/tuners/loha/layer.py``; LyCORIS ``functional/loha.py``):
  ``dW = scale * (w1_a @ w1_b) * (w2_a @ w2_b)`` (element-wise product), scale ``alpha / r`` in both.

A module here stores its effective ``scale`` (the file conventions above are resolved by the
readers), so ``delta`` needs no convention. DoRA's delta depends on the base weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hv_tune.export.lora_math import LoraModule, delta_weight


@dataclass
class LokrModule:
    """``scale * kron(w1, w2)``; ``w1`` (``[a, b]``) or ``w1_a @ w1_b``, ``w2`` (``[c, d]``) or ``w2_a @ w2_b``."""

    w1: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    scale: float = 1.0

    def factor(self, which: int) -> torch.Tensor:
        """The full factor ``w1`` or ``w2`` in float32."""
        full, a, b = (self.w1, self.w1_a, self.w1_b) if which == 1 else (self.w2, self.w2_a, self.w2_b)
        return full.float() if full is not None else a.float() @ b.float()

    @property
    def rank(self) -> int | None:
        """The rank of the decomposed factor(s) (LyCORIS's ``dim``), None when both are full."""
        if self.w2_a is not None:
            return int(self.w2_a.shape[1])
        return int(self.w1_a.shape[1]) if self.w1_a is not None else None

    @property
    def shape(self) -> tuple[int, int]:
        f1 = self.w1 if self.w1 is not None else torch.empty(self.w1_a.shape[0], self.w1_b.shape[1], device="meta")
        f2 = self.w2 if self.w2 is not None else torch.empty(self.w2_a.shape[0], self.w2_b.shape[1], device="meta")
        return f1.shape[0] * f2.shape[0], f1.shape[1] * f2.shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored factors by PEFT/LyCORIS suffix (``lokr_w1``, ``lokr_w2_a``, ...)."""
        names = {"lokr_w1": self.w1, "lokr_w1_a": self.w1_a, "lokr_w1_b": self.w1_b,
                 "lokr_w2": self.w2, "lokr_w2_a": self.w2_a, "lokr_w2_b": self.w2_b}
        return {k: v for k, v in names.items() if v is not None}


@dataclass
class LohaModule:
    """``scale * (w1_a @ w1_b) * (w2_a @ w2_b)``: ``w*_a [out, r]``, ``w*_b [r, in]``."""

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.w1_a.shape[0]), int(self.w1_b.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"hada_w1_a": self.w1_a, "hada_w1_b": self.w1_b, "hada_w2_a": self.w2_a, "hada_w2_b": self.w2_b}


@dataclass
class DoraModule:
    """A LoRA with a trained magnitude per output row (PEFT's ``lora_magnitude_vector``, ``[out]``)."""

    lora: LoraModule
    magnitude: torch.Tensor

    @property
    def rank(self) -> int:
        return self.lora.rank

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.lora.up.shape[0]), int(self.lora.down.shape[1])


Adapter = LoraModule | DoraModule | LokrModule | LohaModule

#: the ``lora.type`` name of each module class
TYPE_NAMES = {LoraModule: "lora", DoraModule: "dora", LokrModule: "lokr", LohaModule: "loha"}


def type_name(m: Adapter) -> str:
    return TYPE_NAMES[type(m)]


def module_shape(m: Adapter) -> tuple[int, int]:
    """``(out, in)`` of the layer a module adapts."""
    if isinstance(m, LoraModule):
        return int(m.up.shape[0]), int(m.down.shape[1])
    return m.shape


def lokr_delta(m: LokrModule) -> torch.Tensor:
    """``scale * kron(w1, w2)`` in float32, ``[out, in]`` (PEFT ``lokr/layer.py: make_kron``)."""
    return torch.kron(m.factor(1), m.factor(2)) * m.scale


def loha_delta(m: LohaModule) -> torch.Tensor:
    """``scale * (w1_a @ w1_b) * (w2_a @ w2_b)`` in float32 (PEFT ``loha/layer.py: make_weight``)."""
    return (m.w1_a.float() @ m.w1_b.float()) * (m.w2_a.float() @ m.w2_b.float()) * m.scale


def dora_weight(m: DoraModule, base: torch.Tensor) -> torch.Tensor:
    """The DoRA-adapted weight ``m * V / ||V||_row``, ``V = W + dW_lora``, float32 ``[out, in]``.

    PEFT ``DoraLinearLayer``: ``weight_norm = ||W + scaling * B @ A||`` over ``dim=1`` (each output
    row), ``mag_norm_scale = magnitude / weight_norm``; no epsilon.
    """
    v = base.float() + delta_weight(m.lora)
    return v * (m.magnitude.float() / torch.linalg.norm(v, dim=1)).unsqueeze(1)


def adapter_delta(m: Adapter, base: torch.Tensor | None = None) -> torch.Tensor:
    """The update ``W' - W`` of any module type, float32 ``[out, in]``.

    Args:
        base: the layer's base weight; needed (only) for DoRA.

    Raises:
        ValueError: for DoRA without ``base``.
    """
    if isinstance(m, LoraModule):
        return delta_weight(m)
    if isinstance(m, LokrModule):
        return lokr_delta(m)
    if isinstance(m, LohaModule):
        return loha_delta(m)
    if base is None:
        raise ValueError("a DoRA update depends on the base weight; none was given")
    return dora_weight(m, base) - base.float()


def lycoris_lokr_scale(alpha: float | None, m: LokrModule) -> float:
    """LyCORIS's LoKr scale for a file's ``alpha``: ``alpha / dim`` with a decomposed factor, else 1.

    ``dim`` is ``w2_b.shape[0]`` (or ``w1_b``'s), as ComfyUI's ``weight_adapter/lokr.py`` and
    musubi-tuner's ``networks/lokr.py`` read it; no alpha means scale 1.
    """
    rank = m.rank
    return 1.0 if alpha is None or rank is None else float(alpha) / rank


def svd_lora(delta: torch.Tensor, rank: int) -> tuple[LoraModule, float]:
    """The best rank-``rank`` LoRA of a delta (truncated SVD, Eckart-Young) and its relative error.

    Returns:
        ``LoraModule(down=Vh_k [k, in], up=U_k S_k [out, k], alpha=k)`` (scale 1, float32) and
        ``||delta - up @ down||_F / ||delta||_F`` (0 for a zero delta).
    """
    d = delta.double()
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    k = max(1, min(rank, s.numel()))
    total = float((s**2).sum())
    err = (float((s[k:] ** 2).sum()) / total) ** 0.5 if total > 0 else 0.0
    return LoraModule(vh[:k].float().contiguous(), (u[:, :k] * s[:k]).float().contiguous(), float(k)), err


def fuse_loha(pieces: list[LohaModule | None], out_sizes: list[int]) -> LohaModule:
    """One LoHa for the row-wise concatenation of layers (exact): the ``_a`` factors block-diagonal
    ``[sum(out), sum(r)]``, the ``_b`` factors stacked ``[sum(r), in]``, each part's scale folded into its
    ``w1_a`` block (scale 1). A part without a LoHa gets zero rows.

    Why exact: row ``i`` of ``(A1 B1) * (A2 B2)`` only uses row ``i`` of ``A1`` and ``A2``, and a row that is zero
    outside its part's columns picks that part's ``B`` rows.

    Raises:
        ValueError: if no part has a LoHa.
    """
    present = [p for p in pieces if p is not None]
    if not present:
        raise ValueError("nothing to fuse: no part has a LoHa")
    ranks = [p.rank if p is not None else 0 for p in pieces]
    total = sum(ranks)
    first = present[0]
    a1, a2 = (first.w1_a.new_zeros(sum(out_sizes), total) for _ in range(2))
    row = col = 0
    for p, n, r in zip(pieces, out_sizes, ranks):
        if p is not None:
            a1[row : row + n, col : col + r] = (p.w1_a.float() * p.scale).to(a1.dtype)
            a2[row : row + n, col : col + r] = p.w2_a
        row, col = row + n, col + r
    b1 = torch.cat([p.w1_b for p in present])
    b2 = torch.cat([p.w2_b for p in present])
    return LohaModule(a1, b1, a2, b2, 1.0)


def loha_rows(m: LohaModule, rows: torch.Tensor | slice) -> LohaModule | None:
    """The LoHa of some output rows of a layer (exact), without the rank columns those rows never use;
    None when the rows have no update (a fused part the LoHa did not train)."""
    a1, a2 = m.w1_a[rows], m.w2_a[rows]
    used = a1.ne(0).any(0) | a2.ne(0).any(0)  # [r]
    if not used.any():
        return None
    return LohaModule(a1[:, used].contiguous(), m.w1_b[used].contiguous(), a2[:, used].contiguous(),
                      m.w2_b[used].contiguous(), m.scale)
