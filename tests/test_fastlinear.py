"""oneDNN-prepacked Linear layers for CPU serving."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bot.fastlinear import PackedLinear, _kernel_agrees, compute_dtype, pack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")


def test_packed_linear_matches_linear_and_a_row_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    linear = nn.Linear(96, 200)
    packed = PackedLinear.from_linear(linear)
    x = torch.randn(37, 96)
    with torch.inference_mode():
        full = packed(x)
        assert torch.allclose(full, linear(x), atol=1e-5)
        for rows in (1, 5, 16):
            assert torch.equal(packed(x[:rows]), full[:rows])
        assert packed(x[None]).shape == (1, 37, 200)  # (batch, tokens, features) inputs too


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_never_depends_on_its_batch_in_the_served_shapes(dtype):
    """SmolLM2's projection shapes, where oneDNN's bf16 kernel on some CPUs (AMD Zen 4) computes a lone
    row with another reduction order than the same row among others."""
    if not _kernel_agrees(dtype):
        pytest.skip(f"this CPU's oneDNN has no {dtype} Linear")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(576, 1536), nn.Linear(1536, 576), nn.Linear(576, 192, bias=False))
    assert pack_linears(model, dtype) == (3, dtype)
    with torch.inference_mode():
        for layer in model:
            x = torch.randn(40, layer.in_features)
            together = layer(x[None])[0]  # (batch, tokens, features), as the model calls it
            alone = torch.cat([layer(x[i:i + 1][None])[0] for i in range(len(x))])
            assert torch.equal(alone, together), (layer, (alone != together).sum())
            assert torch.equal(layer(x[:16]), together[:16])


def test_pack_linears_keeps_weights_shared_and_peft_wraps_the_packed_layers():
    from peft import LoraConfig, get_peft_model

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    weight = model[0].weight
    assert pack_linears(model, torch.float32) == (2, torch.float32)
    assert isinstance(model[0], PackedLinear) and model[0].weight is weight
    assert "packed_weight" not in model.state_dict()  # never saved with the model
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["0", "2"]))
    with torch.inference_mode():
        out = peft_model(torch.randn(3, 8))
    assert out.shape == (3, 4)
    assert isinstance(peft_model.base_model.model[0].base_layer, PackedLinear)


def test_training_still_uses_the_trainable_weight():
    model = nn.Sequential(nn.Linear(4, 2))
    pack_linears(model)
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
def test_bf16_packed_linear_is_close_to_fp32_and_row_independent():
    torch.manual_seed(0)
    linear = nn.Linear(96, 200)
    packed = PackedLinear.from_linear(linear, torch.bfloat16)
    x = torch.randn(37, 96)
    with torch.inference_mode():
        full = packed(x)
        assert full.dtype == torch.float32 and torch.allclose(full, linear(x), atol=5e-2, rtol=5e-2)
        for rows in (1, 5, 16):
            assert torch.equal(packed(x[:rows]), full[:rows])  # a request's answer does not depend on its batch
