"""A lean forward pass of Llama-family decoder stacks for packed serving steps.

It runs the model's own modules (embeddings, norms, rotary embedding, projections, MLP activation),
so the weights, PEFT's LoRA wrappers and any prepacked Linear layers are used exactly as in the
transformers forward, but it skips what serving does not need per layer (decorators, keyword plumbing,
output capture, layout round trips through (batch, heads, tokens, dim)): fewer small operations per
step, which is what a decode step on a CPU is mostly made of besides the Linear layers. Activations
stay (tokens, heads, dim), the layout `bot.runtime.kv_cache.attend` works in. Models of other kinds keep the
transformers forward (`lean_stack` returns None for them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bot.runtime.kv_cache import PackedCache, attend, write_kv

LEAN_LAYERS = frozenset({"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer"})
RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm"})  # weight * x / rms(x), in fp32


def lean_stack(model: nn.Module) -> nn.Module | None:
    """The decoder stack of `model` if the lean pass knows its kind of layer, else None."""
    stack = getattr(model, "model", None)
    layers = getattr(stack, "layers", None)
    if layers is None or not all(hasattr(stack, name) for name in ("embed_tokens", "norm", "rotary_emb")):
        return None
    return stack if all(type(layer).__name__ in LEAN_LAYERS for layer in layers) else None


def _apply(module: nn.Module, x: torch.Tensor, names: list[str] | None) -> torch.Tensor:
    """Call a projection; LoRA-wrapped ones are told which adapter this step's rows use."""
    return module(x, adapter_names=names) if names is not None and hasattr(module, "lora_A") else module(x)


def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm as one `F.rms_norm` call where the module is the usual kind (same result), else the module."""
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None or type(norm).__name__ not in RMS_NORMS:
        return norm(x)
    return F.rms_norm(x, norm.weight.shape, norm.weight, eps)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _attention(
    attn: nn.Module, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], kv, names: list[str] | None
) -> torch.Tensor:
    tokens, dim = h.shape[1], attn.head_dim
    q = _rotate(_apply(attn.q_proj, h, names).view(tokens, -1, dim), *rope)
    k = _rotate(_apply(attn.k_proj, h, names).view(tokens, -1, dim), *rope)
    write_kv(kv, k, _apply(attn.v_proj, h, names).view(tokens, -1, dim))
    return _apply(attn.o_proj, attend(q, kv, attn.scaling).view(1, tokens, -1), names)


def _mlp(mlp: nn.Module, h: torch.Tensor, names: list[str] | None) -> torch.Tensor:
    return _apply(mlp.down_proj, mlp.act_fn(_apply(mlp.gate_proj, h, names)) * _apply(mlp.up_proj, h, names), names)


def lean_forward(
    model: nn.Module,
    stack: nn.Module,
    ids: torch.Tensor,
    positions: torch.Tensor,
    last: torch.Tensor,
    cache: PackedCache,
    names: list[str] | None,
) -> torch.Tensor:
    """Logits (len(last), vocab) of a packed step: `ids` and `positions` are (1, tokens), `last` the
    packed offsets whose next token is wanted; `names` the PEFT adapter name of the rows (or None)."""
    x = stack.embed_tokens(ids)
    cos, sin = stack.rotary_emb(x, positions)
    rope = (cos[0, :, None, :], sin[0, :, None, :])  # (tokens, 1, dim): broadcast over heads
    for layer, kv in zip(stack.layers, cache.layers):
        x = x + _attention(layer.self_attn, _norm(layer.input_layernorm, x), rope, kv, names)
        x = x + _mlp(layer.mlp, _norm(layer.post_attention_layernorm, x), names)
    return _apply(model.lm_head, _norm(stack.norm, x[:, last]), names)[0]
