"""oneDNN-prepacked Linear layers for CPU serving.

What must hold on every CPU: whatever `prepack_linears` chose for a layer, a row's result does not depend
on the other rows of its call (so a greedy answer does not depend on its batch), and it chose the CPU's
fast dtype wherever some way of calling oneDNN keeps rows independent. The CPUs' own ways of breaking
that (a lone row on AMD Zen 4, K blocks that change with the row count on Intel AMX, a thread split)
are simulated exactly below, so the mechanism is tested for each on any CPU; the real kernels are
tested on the CPU at hand.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from bot.runtime.prepacked_linear import (
    AS_IS,
    CALL_ROWS,
    CallRows,
    PrepackedLinear,
    _kernel_agrees,
    calls_for,
    compute_dtype,
    prepack_linears,
    rows_independent,
    thread_count,
)
from bot.runtime.workers import thread_counts

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
SERVED_THREADS = thread_counts(0, prefill=True)  # the thread counts the server's model workers run at here
SMOLLM2_SHAPES = ((576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152))  # q/o, k/v, gate/up, down, lm_head


def assert_rows_independent(layer: nn.Module, in_features: int, threads=SERVED_THREADS, rows: int = 40) -> None:
    """Each row alone, in calls of several sizes and at each thread count equals the row among all of
    them, called as the model calls it: (batch, tokens, features)."""
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode(), thread_count(threads[0]):
        together = layer(x[None])[0]
    for count in threads:
        with torch.inference_mode(), thread_count(count):
            for size in (1, 2, 3, 5, 16, 17, 33):
                parts = torch.cat([layer(part[None])[0] for part in x.split(size)])
                assert torch.equal(parts, together), (layer, count, size, (parts != together).sum().item())


def test_calls_are_padded_and_cut_as_planned():
    sizes = []

    def kernel(x):
        sizes.append(len(x))
        return x * 2

    x = torch.arange(40.0).reshape(20, 2)
    assert torch.equal(CallRows(2)(kernel, x[:1]), x[:1] * 2) and sizes == [2]  # a lone row as two
    assert torch.equal(CallRows(2)(kernel, x[:5]), x[:5] * 2) and sizes[1:] == [5]
    sizes.clear()
    assert torch.equal(CallRows(8, 8)(kernel, x), x * 2) and sizes == [8, 8, 8]  # 8 + 8 + 4 padded to 8
    sizes.clear()
    assert torch.equal(AS_IS(kernel, x), x * 2) and sizes == [20]


def test_packed_linear_matches_linear_and_a_row_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 200))
    reference = nn.Linear(96, 200)
    reference.load_state_dict(model[0].state_dict())
    packing = prepack_linears(model, torch.float32, threads=SERVED_THREADS)
    assert packing.count == 1 and isinstance(model[0], PrepackedLinear)
    x = torch.randn(37, 96)
    with torch.inference_mode():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
        assert model(x[None]).shape == (1, 37, 200)  # (batch, tokens, features) inputs too
    assert_rows_independent(model[0], 96)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_never_depends_on_its_batch_in_the_served_shapes(dtype):
    """SmolLM2's projection shapes with this CPU's real kernels, at the thread counts serving uses: every
    layer is row-independent in the plan chosen for it, and it is in `dtype` unless no way of calling
    oneDNN keeps that dtype's rows independent (shown here again on other rows)."""
    if not _kernel_agrees(dtype):
        pytest.skip(f"this CPU's oneDNN has no {dtype} Linear")
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(i, o, bias=False) for i, o in SMOLLM2_SHAPES], nn.Linear(576, 1536))
    packing = prepack_linears(model, dtype, threads=SERVED_THREADS)
    for layer, (shape, plan) in zip(model, packing.plans.items()):
        assert_rows_independent(layer, shape[0])
        if plan is None or plan.compute != dtype:
            kernel = PrepackedLinear.from_linear(nn.Linear(shape[0], shape[1], bias=shape[2]), dtype).onednn
            x = torch.randn(256, shape[0], generator=torch.Generator().manual_seed(1)).to(dtype)
            with torch.inference_mode():
                assert not any(rows_independent(kernel, x, calls, SERVED_THREADS) for calls in CALL_ROWS), shape


def test_pack_linears_keeps_weights_shared_and_peft_wraps_the_packed_layers():
    from peft import LoraConfig, get_peft_model

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    weight = model[0].weight
    assert prepack_linears(model, torch.float32).count == 2
    assert isinstance(model[0], PrepackedLinear) and model[0].weight is weight
    assert "packed_weight" not in model.state_dict()  # never saved with the model
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["0", "2"]))
    with torch.inference_mode():
        out = peft_model(torch.randn(3, 8))
    assert out.shape == (3, 4)
    assert isinstance(peft_model.base_model.model[0].base_layer, PrepackedLinear)


def test_training_still_uses_the_trainable_weight():
    model = nn.Sequential(nn.Linear(4, 2))
    prepack_linears(model)
    loss = model(torch.randn(3, 4)).sum()
    loss.backward()
    assert model[0].weight.grad is not None


def test_bf16_is_chosen_only_on_cpus_with_native_bf16_dot_products(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags: fma avx2 avx512f avx512bw avx512_vnni\n")
    assert compute_dtype(cpuinfo) == torch.float32  # bf16 is emulated there: far slower than fp32
    cpuinfo.write_text("flags: avx2 avx512f avx512_bf16\n")  # AMD Zen 4
    assert compute_dtype(cpuinfo) == torch.bfloat16
    cpuinfo.write_text("flags: avx512f amx_bf16 amx_tile\n")  # Intel Sapphire Rapids and later
    assert compute_dtype(cpuinfo) == torch.bfloat16
    assert compute_dtype(tmp_path / "missing") == torch.float32


@pytest.mark.skipif(not _kernel_agrees(torch.bfloat16), reason="this CPU's oneDNN has no bf16 Linear")
def test_bf16_packed_linear_is_close_to_fp32():
    torch.manual_seed(0)
    linear = nn.Linear(96, 200)
    packed = PrepackedLinear.from_linear(linear, torch.bfloat16)
    x = torch.randn(37, 96)
    with torch.inference_mode():
        full = packed(x)
    assert full.dtype == torch.float32 and torch.allclose(full, linear(x), atol=5e-2, rtol=5e-2)


# ---- other CPUs, simulated exactly -------------------------------------------------------------


def blocked_matmul(x: torch.Tensor, weight: torch.Tensor, blocks: int) -> torch.Tensor:
    """x @ weightᵀ with the K dimension summed in `blocks` blocks, each exactly, the partial sums added in
    fp32 (as oneDNN adds its K blocks); the same for every row whatever the call holds."""
    parts = [
        (xs.double() @ ws.double().T).float()
        for xs, ws in zip(x.tensor_split(blocks, 1), weight.tensor_split(blocks, 1))
    ]
    return torch.stack(parts).sum(0)


class SimulatedCPU(PrepackedLinear):
    """A CPU whose fp32 kernel is row-independent and whose bf16 kernel sums K in `blocks(rows)` blocks.
    Results stay in fp32 (not rounded to bf16 as oneDNN's are), so that every difference shows."""

    @staticmethod
    def prepack(weight):
        return weight

    def blocks(self, rows: int) -> int:
        return 1

    def onednn(self, x):
        blocks = self.blocks(len(x)) if self.compute == torch.bfloat16 else 1
        return self.biased(blocked_matmul(x, self.packed_weight, blocks))

    def biased(self, out):
        return out if self.packed_bias is None else out + self.packed_bias.float()


class LoneRowCPU(SimulatedCPU):
    """AMD Zen 4's bf16 (and fp32) kernel for 1536-wide inputs: a lone row gets other K blocks."""

    def blocks(self, rows):
        return 3 if rows == 1 else 2


class AmxCPU(SimulatedCPU):
    """Intel AMX's bf16 blocking: K in one block up to 16 rows and from `out_features` rows on, in two
    between (from oneDNN's AMX heuristic), so no padding of short calls helps."""

    def blocks(self, rows):
        return 1 if rows <= 16 or rows >= self.out_features else 2


class ThreadSplitCPU(SimulatedCPU):
    """A bf16 kernel that splits K between its threads."""

    def blocks(self, rows):
        return torch.get_num_threads()


class PositionCPU(SimulatedCPU):
    """A bf16 kernel in which a row's K blocks depend on its place in the call: nothing can fix that."""

    def onednn(self, x):
        if self.compute == torch.float32:
            return super().onednn(x)
        odd = (torch.arange(len(x)) % 2 == 1)[:, None]
        return self.biased(
            torch.where(odd, blocked_matmul(x, self.packed_weight, 2), blocked_matmul(x, self.packed_weight, 1))
        )


def simulated_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(96, 64, bias=False), nn.Linear(64, 96, bias=False))


@pytest.mark.parametrize(
    ("cpu", "calls"), [(SimulatedCPU, AS_IS), (LoneRowCPU, CallRows(2)), (AmxCPU, CallRows(16, 16))]
)
def test_the_fast_dtype_is_kept_with_the_cheapest_calls_that_make_rows_independent(cpu, calls):
    model = simulated_model()
    packing = prepack_linears(model, torch.bfloat16, threads=(1,), layer_type=cpu)
    assert {plan.compute for plan in packing.plans.values()} == {torch.bfloat16} and not packing.lost()
    assert {plan.calls for plan in packing.plans.values()} == {calls}
    for layer in model:
        assert isinstance(layer, cpu) and layer.calls == calls
        assert_rows_independent(layer, layer.in_features, threads=(1,))
    with torch.inference_mode():  # and the results are the layers' own, not the padding's
        x = torch.randn(5, 96)
        assert torch.allclose(model(x), x @ model[0].weight.T @ model[1].weight.T, atol=0.05, rtol=0.05)


def test_without_the_check_those_cpus_would_answer_by_batch():
    """The simulations do vary as served as is (so the test above shows the check working)."""
    for cpu in (LoneRowCPU, AmxCPU, ThreadSplitCPU, PositionCPU):
        layer = cpu.from_linear(nn.Linear(96, 64, bias=False), torch.bfloat16)
        x = torch.randn(256, 96).to(torch.bfloat16)
        with torch.inference_mode():
            assert not rows_independent(layer.onednn, x, AS_IS, threads=(1, 2)), cpu


def test_a_thread_split_is_caught_at_the_thread_counts_serving_uses(caplog):
    layer = ThreadSplitCPU.from_linear(nn.Linear(96, 64, bias=False), torch.bfloat16)
    assert calls_for(layer.onednn, 96, torch.bfloat16, threads=(1,)) == AS_IS  # one thread count: consistent
    assert calls_for(layer.onednn, 96, torch.bfloat16, threads=(1, 2)) is None  # decode 1, prefill 2: never
    model = simulated_model()
    with caplog.at_level(logging.WARNING, logger="bot.runtime.prepacked_linear"):
        packing = prepack_linears(model, torch.bfloat16, threads=(1, 2), layer_type=ThreadSplitCPU)
    assert {plan.compute for plan in packing.plans.values()} == {torch.float32}  # fp32 is row-independent
    assert "fast path partly lost" in caplog.text
    assert "96→64 (float32, calls as they come), 64→96 (float32, calls as they come)" in caplog.text
    assert_rows_independent(model[0], 96, threads=(1, 2))


def test_only_the_shape_that_cannot_be_fixed_leaves_the_fast_dtype():
    class OneBadShape(PositionCPU):
        def onednn(self, x):
            return PositionCPU.onednn(self, x) if self.in_features == 96 else SimulatedCPU.onednn(self, x)

    model = simulated_model()
    packing = prepack_linears(model, torch.bfloat16, threads=(1,), layer_type=OneBadShape)
    assert packing.lost() == [(96, 64, False)]
    assert [layer.compute for layer in model] == [torch.float32, torch.bfloat16]
    assert "96→64: float32" in packing.describe() and "64→96: bfloat16" in packing.describe()
    for layer in model:
        assert_rows_independent(layer, layer.in_features, threads=(1,))
