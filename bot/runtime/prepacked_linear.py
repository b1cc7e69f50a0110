"""Serving-only speedup for CPUs: Linear layers whose weights are prepacked once for oneDNN.

On the 2-core CPUs supportloop targets, a decode step is dominated by the Linear layers, and oneDNN's
prepacked path runs them faster than `F.linear`. On CPUs with native bf16 dot products (`amx_bf16`, or
`avx512_bf16`), the weights are packed in bf16 and the layer computes in bf16 (inputs rounded, outputs
returned in fp32); without them (AVX2, AVX-512 without BF16) bf16 is emulated and far slower than fp32,
so it is chosen by hardware only. The measurements, per CPU, are in docs/performance.md.

A greedy answer must not depend on the batch it rode in, so a row's output must not depend on how many
rows share its call, where it sits among them, or how many threads compute it. oneDNN does not promise
that: it picks its kernel, blocking and thread split by the call's shape, and some choices add a row's
products in another order. An AMD Zen 4 computes a lone row of a 1536-wide input with other K blocks
(fp32 and bf16); on an Intel Xeon with AMX the K blocks of a bf16 call change with its row count at
small and at large counts alike (from oneDNN's AMX blocking heuristic; partial sums of K blocks are
added in fp32, then rounded to bf16). So each Linear shape is checked once, when packing, in the call
sizes and thread counts serving uses (`rows_independent`), and gets the cheapest way of calling oneDNN
(`CallRows`: as is; short calls padded with zero rows, e.g. a lone row computed as two; or every call
exactly 16 rows, split and padded) under which its rows are independent: in the CPU's preferred dtype
if any works, else in fp32, else the layer stays a plain `nn.Linear`. Padding is cheap where it is
needed: a call of a few rows is bound by reading the weights.

The packed copy is used for inference only; the module stays an `nn.Linear` (same weight parameter,
tied weights kept), so PEFT wraps it as the base layer of a LoRA adapter like any other Linear.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
BATCH_HINT = 16  # rows oneDNN tunes the packed layout for (the default max batch)
BF16_UNITS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 dot-product instructions

CHECK_ROWS = 256  # the largest call checked: the default prefill chunk
CALL_SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 100, 128, 200, CHECK_ROWS)
CHECK_OUTPUTS = 1 << 17  # outputs compared per call size (at most CHECK_ROWS rows): a rounding that
# differs in 1.5 of 10^4 outputs (Zen 4's lone rows in bf16) shows in ~20 of them
Kernel = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CallRows:
    """How a 2-D input's rows reach oneDNN: calls of fewer than `least` rows are padded with zero rows
    (dropped from the result); inputs of more than `most` are cut into calls of `most` rows."""

    least: int = 1
    most: int | None = None

    def __call__(self, kernel: Kernel, x: torch.Tensor) -> torch.Tensor:
        if self.most is not None and len(x) > self.most:
            return torch.cat([self(kernel, part) for part in x.split(self.most)])
        short = self.least - len(x)
        if short <= 0:
            return kernel(x)
        return kernel(torch.cat([x, x.new_zeros(short, x.shape[1])]))[: len(x)]

    def __str__(self) -> str:
        if self.most is not None:
            return f"calls of exactly {self.most} rows"
        return "calls as they come" if self.least == 1 else f"calls padded to at least {self.least} rows"


AS_IS = CallRows()
# Cheapest first. Padding short calls (2 = a lone row computed as two: Zen 4) costs nothing on large
# calls; fixed-size calls (AMX, where the K blocks change with the row count everywhere) cut a prompt
# into many calls, each rereading its weight from cache.
CALL_ROWS = (AS_IS, CallRows(2), CallRows(16), CallRows(16, 16), CallRows(32, 32))


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        return set(cpuinfo.read_text().split())
    except OSError:
        return set()


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    return any(unit in cpu_flags(cpuinfo) for unit in BF16_UNITS)


def compute_dtype(cpuinfo: Path = Path("/proc/cpuinfo")) -> torch.dtype:
    """bf16 where the CPU has native bf16 dot products, else fp32."""
    return torch.bfloat16 if cpu_has_bf16(cpuinfo) else torch.float32


class PrepackedLinear(nn.Linear):
    """An `nn.Linear` computed from a oneDNN-prepacked copy of its weight (inference only)."""

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, compute: torch.dtype = torch.float32, calls: CallRows = AS_IS
    ) -> PrepackedLinear:
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed.in_features, packed.out_features = linear.in_features, linear.out_features
        packed.weight, packed.bias, packed.compute = linear.weight, linear.bias, compute
        weight = linear.weight.detach().to(compute)
        packed.register_buffer("packed_weight", cls.prepack(weight), persistent=False)
        packed.register_buffer(
            "packed_bias", None if linear.bias is None else linear.bias.detach().to(compute), persistent=False
        )
        packed.calls = calls  # how rows reach oneDNN (chosen by `prepack_linears`)
        return packed

    @staticmethod
    def prepack(weight: torch.Tensor) -> torch.Tensor:
        """The weight (in the compute dtype) in oneDNN's layout for `onednn`."""
        return torch.ops.mkldnn._reorder_linear_weight(weight, BATCH_HINT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return super().forward(x)
        rows = x.to(self.compute).reshape(-1, self.in_features)
        return self.calls(self.onednn, rows).view(*x.shape[:-1], -1).to(x.dtype)

    def onednn(self, x: torch.Tensor) -> torch.Tensor:
        """The oneDNN call on an input already in the compute dtype."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.packed_bias, "none", [], "")


@contextmanager
def thread_count(count: int) -> Iterator[None]:
    """torch's CPU thread count for the calling thread, for a while."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rows_independent(kernel: Kernel, x: torch.Tensor, calls: CallRows, threads: Iterable[int]) -> bool:
    """Whether every row of `x` comes out of `calls` the same in every call size of `CALL_SIZES`, at every
    position of its call, at each thread count: compared with all rows in one input."""
    threads = tuple(threads)
    with thread_count(threads[0]):
        reference = calls(kernel, x)
    compare = max(1, math.ceil(CHECK_OUTPUTS / reference.shape[1]))
    for count in threads:
        with thread_count(count):
            for size in CALL_SIZES:
                rows = x[: min(len(x), max(compare, 2 * size + 1))]  # a whole call, a second and a short one
                if not torch.equal(
                    torch.cat([calls(kernel, part) for part in rows.split(size)]), reference[: len(rows)]
                ):
                    return False
    return True


def calls_for(kernel: Kernel, in_features: int, dtype: torch.dtype, threads: Iterable[int]) -> CallRows | None:
    """The first of `CALL_ROWS` under which `kernel`'s rows are independent of their calls (None: none
    is). Checked on random rows from a fixed seed, so every process reaches the same verdict."""
    x = torch.randn(CHECK_ROWS, in_features, generator=torch.Generator().manual_seed(0)).to(dtype)
    threads = tuple(threads)
    with torch.inference_mode():
        return next((calls for calls in CALL_ROWS if rows_independent(kernel, x, calls, threads)), None)


@dataclass(frozen=True)
class Plan:
    """How the Linear layers of one shape are computed."""

    compute: torch.dtype
    calls: CallRows

    def __str__(self) -> str:
        return f"{str(self.compute).removeprefix('torch.')}, {self.calls}"


Shape = tuple[int, int, bool]  # in features, out features, has a bias


@dataclass
class Prepacking:
    """What `prepack_linears` did: the plan of each Linear shape (None: left as `nn.Linear`) and how many
    layers it packed."""

    preferred: torch.dtype | None = None
    plans: dict[Shape, Plan | None] = field(default_factory=dict)
    count: int = 0

    def lost(self) -> list[Shape]:
        """Shapes not computed in the preferred dtype."""
        return [shape for shape, plan in self.plans.items() if plan is None or plan.compute != self.preferred]

    def describe(self) -> str:
        if not self.plans:
            return "no Linear layers prepacked"
        shapes = "; ".join(
            f"{i}→{o}: {plan or 'left as nn.Linear (rows vary)'}" for (i, o, _), plan in self.plans.items()
        )
        return f"{self.count} Linear layers prepacked for oneDNN ({shapes})"


def supported(model: nn.Module) -> bool:
    """Prepacking applies to fp32 models on a CPU with oneDNN."""
    param = next(model.parameters())
    return param.device.type == "cpu" and param.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def prepack_linears(
    model: nn.Module,
    compute: torch.dtype | None = None,
    threads: Iterable[int] = (),
    layer_type: type[PrepackedLinear] = PrepackedLinear,
) -> Prepacking:
    """Swap every plain `nn.Linear` of `model` for a `layer_type` in place, each shape on its own plan
    (see the module's docstring): the preferred dtype (`compute`, or by hardware) where its rows can be
    made independent of their calls at the given thread counts (default: the current one), else fp32,
    else unpacked. Nothing where unsupported."""
    if not supported(model):
        return Prepacking()
    preferred = compute or compute_dtype()
    dtypes = [dtype for dtype in dict.fromkeys([preferred, torch.float32]) if _kernel_agrees(dtype, layer_type)]
    threads = tuple(threads) or (torch.get_num_threads(),)
    packing = Prepacking(preferred)
    linears = [
        (module, name, child)
        for module in list(model.modules())
        for name, child in list(module.named_children())
        if type(child) is nn.Linear
    ]
    for parent, name, child in linears:
        shape = (child.in_features, child.out_features, child.bias is not None)
        if shape not in packing.plans:
            packing.plans[shape] = _plan(layer_type, child, dtypes, threads)
        plan = packing.plans[shape]
        if plan is not None:
            setattr(parent, name, layer_type.from_linear(child, plan.compute, plan.calls))
            packing.count += 1
    _warn_if_lost(packing)
    return packing


def _plan(
    layer_type: type[PrepackedLinear], linear: nn.Linear, dtypes: list[torch.dtype], threads: tuple[int, ...]
) -> Plan | None:
    """The first of `dtypes` with a way of calling oneDNN that keeps `linear`'s rows independent."""
    for dtype in dtypes:
        calls = calls_for(layer_type.from_linear(linear, dtype).onednn, linear.in_features, dtype, threads)
        log.info(
            "packed %s Linear %d→%d at %s thread(s): %s",
            dtype,
            linear.in_features,
            linear.out_features,
            "/".join(map(str, threads)),
            f"row-independent in {calls}" if calls else "rows vary in every way tried",
        )
        if calls is not None:
            return Plan(dtype, calls)
    return None


def _warn_if_lost(packing: Prepacking) -> None:
    lost = packing.lost()
    if lost:
        log.warning(
            "CPU fast path partly lost: the rows of these Linear shapes depend on their batch in %s "
            "however oneDNN is called: %s",
            packing.preferred,
            ", ".join(f"{i}→{o} ({packing.plans[(i, o, bias)] or 'unpacked'})" for i, o, bias in lost),
        )


def _kernel_agrees(dtype: torch.dtype, layer_type: type[PrepackedLinear] = PrepackedLinear) -> bool:
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2  # bf16 keeps 8 bits of mantissa
    try:
        linear, x = nn.Linear(64, 32), torch.randn(3, 64)
        with torch.inference_mode():
            return torch.allclose(layer_type.from_linear(linear, dtype)(x), linear(x), atol=tolerance, rtol=tolerance)
    except RuntimeError as exc:  # an op missing from this torch build
        log.info("oneDNN prepacked %s Linear unavailable: %s", dtype, exc)
        return False
