"""Serving-only speedup for CPUs: Linear layers whose weights are prepacked once for oneDNN.

On the 2-core CPUs supportloop targets, a decode step is dominated by the Linear layers. oneDNN's
prepacked fp32 path runs them about 1.6x faster than `F.linear` at 4-64 rows (measured here for
SmolLM2's shapes), and a row's output does not depend on how many other rows share the call, so a
request's answer is the same alone or batched (checked for every shape when packing: where oneDNN
rounds a lone row differently, lone rows are computed as two). On CPUs with native bf16 dot products
(`amx_bf16`, or `avx512_bf16`), the weights are packed in bf16 and the layer computes in bf16 (inputs
rounded, outputs returned in fp32), row-independent the same way. Measured at 16 rows
for SmolLM2's shapes: 2.2-4.3x faster than packed fp32 on an Intel Xeon with AMX, 1.7-1.9x on an AMD
EPYC (Zen 4) with AVX-512 BF16. Without them (AVX2, AVX-512 without BF16) bf16 is emulated and far
slower than fp32, so it is chosen by hardware only. The
packed copy is used for inference only; the module stays an `nn.Linear` (same weight parameter, tied
weights kept), so PEFT wraps it as the base layer of a LoRA adapter like any other Linear.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
BATCH_HINT = 16  # rows oneDNN tunes the packed layout for (the default max batch)


BF16_UNITS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 dot-product instructions


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return any(unit in flags for unit in BF16_UNITS)


class PackedLinear(nn.Linear):
    """An `nn.Linear` computed from a oneDNN-prepacked copy of its weight (inference only)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute: torch.dtype = torch.float32) -> PackedLinear:
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed.in_features, packed.out_features = linear.in_features, linear.out_features
        packed.weight, packed.bias, packed.compute = linear.weight, linear.bias, compute
        weight = linear.weight.detach().to(compute)
        packed.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, BATCH_HINT),
                               persistent=False)
        packed.register_buffer("packed_bias", None if linear.bias is None else linear.bias.detach().to(compute),
                               persistent=False)
        packed.pad_single = False  # compute a lone row as two (set by `pack_linears`, see `row_variance`)
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return super().forward(x)
        inputs = x.to(self.compute)
        if self.pad_single and inputs.numel() == self.in_features:
            out = self.onednn(inputs.reshape(1, -1).repeat(2, 1))[:1].view(*x.shape[:-1], -1)
        else:
            out = self.onednn(inputs)
        return out.to(x.dtype)

    def onednn(self, x: torch.Tensor) -> torch.Tensor:
        """The oneDNN call on an input already in the compute dtype."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.packed_bias, "none", [], "")


def row_variance(layer: PackedLinear, rows: int = 128) -> str | None:
    """Whether a row's result depends on the other rows of its call, which would make a request's
    answer depend on its batch: None (never), "lone" (only a row alone differs: oneDNN picks another
    reduction order for one row; measured on an AMD Zen 4 in bf16 for 1536-wide inputs, ~2 in 10^4
    outputs round differently), or "varies". Checked on random rows, in the call sizes a batch gives."""
    with torch.inference_mode():
        x = torch.randn(rows, layer.in_features, dtype=layer.compute)
        together = layer.onednn(x)
        differs = [n for n in (1, 2, 3, 16)
                   if not torch.equal(torch.cat([layer.onednn(chunk) for chunk in x.split(n)]), together)]
    return None if not differs else "lone" if differs == [1] else "varies"


def _make_row_independent(layers: list[PackedLinear]) -> bool:
    """Pad lone rows where that makes each layer row-independent (one check per shape); False if some
    layer cannot be."""
    verdicts: dict[tuple, str | None] = {}
    for layer in layers:
        shape = (layer.in_features, layer.out_features, layer.bias is None)
        if shape not in verdicts:
            verdicts[shape] = row_variance(layer)
            verdict = {None: "row-independent", "lone": "lone rows computed as two", "varies": "rows vary"}
            log.info("packed %s Linear %d→%d: %s", layer.compute, shape[0], shape[1], verdict[verdicts[shape]])
        layer.pad_single = verdicts[shape] == "lone"
    return "varies" not in verdicts.values()


def supported(model: nn.Module) -> bool:
    """Prepacking applies to fp32 models on a CPU with oneDNN."""
    param = next(model.parameters())
    return param.device.type == "cpu" and param.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def compute_dtype(cpuinfo: Path = Path("/proc/cpuinfo")) -> torch.dtype:
    """bf16 where the CPU has native bf16 dot products, else fp32."""
    return torch.bfloat16 if cpu_has_bf16(cpuinfo) else torch.float32


def pack_linears(model: nn.Module, compute: torch.dtype | None = None) -> tuple[int, torch.dtype | None]:
    """Swap every plain `nn.Linear` of `model` for a `PackedLinear` in place; returns how many and the
    compute dtype (by hardware unless given). Falls back from bf16 to fp32, and to nothing (0, None),
    where unsupported, if the packed kernel disagrees with `F.linear`, or if a row's result would
    depend on its batch."""
    if not supported(model):
        return 0, None
    linears = [(parent, name, child) for parent in list(model.modules())
               for name, child in list(parent.named_children()) if type(child) is nn.Linear]
    for dtype in dict.fromkeys([compute or compute_dtype(), torch.float32]):
        if not _kernel_agrees(dtype):
            continue
        packed = [PackedLinear.from_linear(child, dtype) for *_, child in linears]
        if _make_row_independent(packed):
            for (parent, name, _), layer in zip(linears, packed):
                setattr(parent, name, layer)
            return len(packed), dtype
    return 0, None


def _kernel_agrees(dtype: torch.dtype) -> bool:
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2  # bf16 keeps 8 bits of mantissa
    try:
        linear, x = nn.Linear(64, 32), torch.randn(3, 64)
        with torch.inference_mode():
            return torch.allclose(PackedLinear.from_linear(linear, dtype)(x), linear(x), atol=tolerance, rtol=tolerance)
    except RuntimeError as exc:  # an op missing from this torch build
        log.info("oneDNN prepacked %s Linear unavailable: %s", dtype, exc)
        return False
