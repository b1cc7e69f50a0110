"""KV storage for packed batches: one slot per running sequence in per-layer buffers, written in place;
the attention function that reads them; and the cache of shared prompt prefixes (the system prompt).
Model-agnostic apart from the transformers `Cache` interface it implements."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer

if TYPE_CHECKING:
    from bot.batching import Segment


@dataclass
class StepPlan:
    """Where each packed token goes: decode tokens (one per sequence) are written and attended in one
    batched operation over the contiguous slot range; prompt chunks one segment at a time."""
    active: int  # slots in use: [0, active)
    width: int  # longest sequence after this step
    dec_offsets: torch.Tensor  # positions of decode tokens in the packed row
    dec_slots: torch.Tensor
    dec_positions: torch.Tensor
    dec_mask: torch.Tensor  # (active, 1, 1, width): which keys each slot's decode query sees
    prefills: list[tuple[int, int, int, int]]  # (slot, offset in the packed row, first position, tokens)


class PackedLayer(DynamicLayer):
    """One layer's KV for every running sequence: a (slots, heads, positions, dim) buffer; sequence i
    lives in slot i from position 0, so appending writes in place and the decode attention of all
    sequences is one batched call over a view (no copies, no re-concatenation)."""

    def __init__(self, cache: PackedCache) -> None:
        super().__init__()
        self.owner, self.is_initialized = cache, True
        self.keys = self.values = None

    def allocate(self, slots: int, heads: int, positions: int, dim: int, dtype, device) -> None:
        old = (self.keys, self.values)
        self.keys = torch.zeros(slots, heads, positions, dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        if old[0] is not None:
            s, _, t, _ = old[0].shape
            self.keys[:s, :, :t], self.values[:s, :, :t] = old

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        plan = self.owner.plan
        keys, values = key_states[0], value_states[0]  # (heads, packed tokens, dim)
        if len(plan.dec_offsets):
            self.keys[plan.dec_slots, :, plan.dec_positions] = keys[:, plan.dec_offsets].transpose(0, 1)
            self.values[plan.dec_slots, :, plan.dec_positions] = values[:, plan.dec_offsets].transpose(0, 1)
        for slot, offset, start, n in plan.prefills:
            self.keys[slot, :, start:start + n] = keys[:, offset:offset + n]
            self.values[slot, :, start:start + n] = values[:, offset:offset + n]
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0


class PackedCache(Cache):
    """The KV of every running sequence, for every layer, in slots kept contiguous."""

    def __init__(self, num_layers: int, heads: int, dim: int, dtype, device, slots: int) -> None:
        super().__init__(layers=[PackedLayer(self) for _ in range(num_layers)])
        self.shape, self.dtype, self.device = (heads, dim), dtype, device
        self.slot_of: dict[int, int] = {}
        self.order: list[int] = []  # seq in each slot
        self.length: dict[int, int] = {}
        self.plan: StepPlan | None = None
        self._allocate(slots, 256)

    def _allocate(self, slots: int, positions: int) -> None:
        self.capacity = (slots, positions)
        for layer in self.layers:
            layer.allocate(slots, self.shape[0], positions, self.shape[1], self.dtype, self.device)

    def slot(self, seq: int) -> int:
        if seq not in self.slot_of:
            if len(self.order) == self.capacity[0]:
                self._allocate(2 * self.capacity[0], self.capacity[1])
            self.slot_of[seq], self.length[seq] = len(self.order), 0
            self.order.append(seq)
        return self.slot_of[seq]

    def release(self, seq: int) -> None:
        """Free a sequence's slot; the last slot moves into it so the used range stays contiguous."""
        if seq not in self.slot_of:
            return
        slot, last = self.slot_of.pop(seq), self.order.pop()
        del self.length[seq]
        if last != seq:
            moved, n = len(self.order), self.length[last]  # `last` sat in the slot just past the end
            for layer in self.layers:
                layer.keys[slot, :, :n] = layer.keys[moved, :, :n]
                layer.values[slot, :, :n] = layer.values[moved, :, :n]
            self.order[slot], self.slot_of[last] = last, slot

    def prepare(self, segments: list[Segment]) -> None:
        """Make room for this step's tokens and describe where they go (shared by all layers)."""
        ends = [s.start + len(s.tokens) for s in segments]
        if max(ends) > self.capacity[1]:
            self._allocate(self.capacity[0], max(2 * self.capacity[1], max(ends)))
        decode, prefills, offset = [], [], 0
        for segment, end in zip(segments, ends):
            slot = self.slot(segment.row.seq)
            self.length[segment.row.seq] = end
            if len(segment.tokens) == 1:
                decode.append((offset, slot, segment.start))
            else:
                prefills.append((slot, offset, segment.start, len(segment.tokens)))
            offset += len(segment.tokens)
        self.plan = self._plan(decode, prefills)

    def _plan(self, decode: list[tuple[int, int, int]], prefills: list) -> StepPlan:
        active, width = len(self.order), max(self.length.values())
        as_tensor = lambda i: torch.tensor([d[i] for d in decode], dtype=torch.long, device=self.device)  # noqa: E731
        visible = torch.ones(active, dtype=torch.long, device=self.device)  # non-decoding slots: a dummy key
        if decode:
            visible[as_tensor(1)] = as_tensor(2) + 1
        mask = torch.arange(width, device=self.device)[None, :] < visible[:, None]
        return StepPlan(active, width, as_tensor(0), as_tensor(1), as_tensor(2), mask[:, None, None, :], prefills)

    def copy_prefix(self, seq: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        slot = self.slot_of[seq]
        return [(layer.keys[slot, :, :length].clone(), layer.values[slot, :, :length].clone())
                for layer in self.layers]

    def seed(self, seq: int, prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        slot, length = self.slot(seq), prefix[0][0].shape[1]
        if length > self.capacity[1]:
            self._allocate(self.capacity[0], 2 * length)
        for layer, (keys, values) in zip(self.layers, prefix):
            layer.keys[slot, :, :length], layer.values[slot, :, :length] = keys, values
        self.length[seq] = length


def _decode_attention(query: torch.Tensor, layer: PackedLayer, plan: StepPlan, scaling: float) -> torch.Tensor:
    """One token per sequence against the slot range's keys, as two batched matmuls over views of the
    buffers. The query heads that share a KV head are stacked as rows, so GQA needs no K/V copies."""
    heads, dim = query.shape[1], query.shape[3]
    keys, values = layer.keys[:plan.active, :, :plan.width], layer.values[:plan.active, :, :plan.width]
    group = heads // keys.shape[1]
    q = query.new_zeros(plan.active, heads, dim)
    q[plan.dec_slots] = query[0][:, plan.dec_offsets].transpose(0, 1)
    scores = torch.matmul(q.view(plan.active, keys.shape[1], group, dim), keys.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~plan.dec_mask, float("-inf")).softmax(-1)
    out = torch.matmul(scores, values).view(plan.active, heads, dim)
    return out[plan.dec_slots].transpose(0, 1)


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     packed_cache: PackedCache | None = None, **kwargs):
    """Attention for a packed step (an `AttentionInterface` function): each sequence's queries see
    only that sequence's keys. All decode queries go in one batched call over the slot range."""
    layer, plan = packed_cache.layers[module.layer_idx], packed_cache.plan
    out = torch.empty_like(query)  # (1, heads, packed tokens, dim)
    if len(plan.dec_offsets):
        out[0][:, plan.dec_offsets] = _decode_attention(query, layer, plan, scaling)
    for slot, offset, start, n in plan.prefills:
        total = start + n
        mask = torch.arange(total, device=query.device)[None, :] <= (start + torch.arange(n, device=query.device))[:, None]
        out[:, :, offset:offset + n] = F.scaled_dot_product_attention(
            query[:, :, offset:offset + n], layer.keys[slot:slot + 1, :, :total], layer.values[slot:slot + 1, :, :total],
            attn_mask=mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


KV = list[tuple[torch.Tensor, torch.Tensor]]  # one (keys, values) pair per layer


class PrefixCache:
    """KV of prompt prefixes shared by many requests (the system prompt), per adapter version, LRU.
    A hit skips recomputing those tokens at prefill."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[tuple[str, tuple[int, ...]], KV] = OrderedDict()

    def get(self, version: str, tokens: tuple[int, ...]) -> KV | None:
        key = (version, tokens)
        if key in self.entries:
            self.entries.move_to_end(key)
        return self.entries.get(key)

    def put(self, version: str, tokens: tuple[int, ...], kv: KV) -> None:
        self.entries[(version, tokens)] = kv
        self.entries.move_to_end((version, tokens))
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def drop(self, version: str) -> None:
        for key in [k for k in self.entries if k[0] == version]:
            del self.entries[key]


