"""Serving-only speedup for CPUs: Linear layers whose weights are prepacked once for oneDNN.

On the 2-core CPUs supportloop targets, a decode step is dominated by the Linear layers. oneDNN's
prepacked fp32 path runs them about 1.6x faster than `F.linear` at 4-64 rows (measured here for
SmolLM2's shapes), and a row's output does not depend on how many other rows share the call, so a
request's answer is the same alone or batched. The packed copy is used for inference only; the
module stays an `nn.Linear` (same weight parameter, tied weights kept), so PEFT wraps it as the base
layer of a LoRA adapter like any other Linear.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)
BATCH_HINT = 16  # rows oneDNN tunes the packed layout for (the default max batch)


class PackedLinear(nn.Linear):
    """An `nn.Linear` computed from a oneDNN-prepacked copy of its weight (inference only)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed.in_features, packed.out_features = linear.in_features, linear.out_features
        packed.weight, packed.bias = linear.weight, linear.bias
        packed.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), BATCH_HINT),
                               persistent=False)
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return super().forward(x)
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, bias, "none", [], "")


def supported(model: nn.Module) -> bool:
    """Prepacking applies to fp32 models on a CPU with oneDNN."""
    param = next(model.parameters())
    return param.device.type == "cpu" and param.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def pack_linears(model: nn.Module) -> int:
    """Swap every plain `nn.Linear` of `model` for a `PackedLinear` in place; returns how many.
    Does nothing (returns 0) where unsupported or if the packed kernel disagrees with `F.linear`."""
    if not supported(model) or not _kernel_agrees():
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear.from_linear(child))
                count += 1
    return count


def _kernel_agrees() -> bool:
    try:
        linear, x = nn.Linear(64, 32), torch.randn(3, 64)
        with torch.inference_mode():
            return torch.allclose(PackedLinear.from_linear(linear)(x), linear(x), atol=1e-4, rtol=1e-4)
    except RuntimeError as exc:  # an op missing from this torch build
        log.info("oneDNN prepacked Linear unavailable: %s", exc)
        return False
