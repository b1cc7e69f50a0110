"""KV storage for packed batches: one slot per running sequence in per-layer buffers, written in place;
the attention function that reads them; and the cache of shared prompt prefixes (the system prompt).
Model-agnostic apart from the transformers `Cache` interface it implements."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer

from bot.runtime.types import Segment


@dataclass
class StepPlan:
    """Where each packed token goes: decode tokens (one per sequence) are written and attended in one
    batched operation over the contiguous slot range; prompt chunks one segment at a time."""

    active: int  # slots in use: [0, active)
    width: int  # longest sequence after this step
    dec_offsets: torch.Tensor  # positions of decode tokens in the packed row
    dec_slots: torch.Tensor
    dec_positions: torch.Tensor
    dec_mask: torch.Tensor  # (slots attended, 1, 1, width): which keys each slot's decode query sees
    prefills: list[tuple[int, int, int, int]]  # (slot, offset in the packed row, first position, tokens)
    aligned: bool = False  # decode token i sits at packed offset i and in slot i (no gathers needed)


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
        write_kv(self, key_states[0].transpose(0, 1), value_states[0].transpose(0, 1))
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
        aligned = all(offset == i and slot == i for i, (offset, slot, _) in enumerate(decode))
        active = len(decode) if aligned else len(self.order)
        width = max([position + 1 for *_, position in decode] if aligned else self.length.values(), default=1)
        as_tensor = lambda i: torch.tensor([d[i] for d in decode], dtype=torch.long, device=self.device)  # noqa: E731
        visible = torch.ones(active, dtype=torch.long, device=self.device)  # non-decoding slots: a dummy key
        if decode:
            visible[as_tensor(1)] = as_tensor(2) + 1
        mask = torch.arange(width, device=self.device)[None, :] < visible[:, None]
        return StepPlan(
            active,
            width,
            as_tensor(0),
            as_tensor(1),
            as_tensor(2),
            mask[:, None, None, :],
            prefills,
            aligned and bool(decode),
        )

    def rank(self, seq: int) -> int:
        """The slot of `seq` (rows kept in slot order make decode steps gather-free), or past the end."""
        return self.slot_of.get(seq, len(self.order))

    def copy_prefix(self, seq: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        slot = self.slot_of[seq]
        return [(layer.keys[slot, :, :length].clone(), layer.values[slot, :, :length].clone()) for layer in self.layers]

    def export(self, seq: int, length: int) -> tuple[bytes, tuple[int, ...], str]:
        """The first `length` positions of a sequence's KV as plain bytes (to hand to another process)."""
        slot = self.slot_of[seq]
        kv = torch.stack(
            [torch.stack((layer.keys[slot, :, :length], layer.values[slot, :, :length])) for layer in self.layers]
        ).cpu()
        return kv.view(torch.uint8).numpy().tobytes(), tuple(kv.shape), str(kv.dtype).removeprefix("torch.")

    def seed(self, seq: int, prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        slot, length = self.slot(seq), prefix[0][0].shape[1]
        if length > self.capacity[1]:
            self._allocate(self.capacity[0], 2 * length)
        for layer, (keys, values) in zip(self.layers, prefix):
            layer.keys[slot, :, :length], layer.values[slot, :, :length] = keys, values
        self.length[seq] = length


def write_kv(layer: PackedLayer, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Store this step's keys and values, (packed tokens, kv heads, dim), in their sequences' slots."""
    plan = layer.owner.plan
    if len(plan.dec_offsets):
        rows = slice(0, len(plan.dec_offsets)) if plan.aligned else plan.dec_offsets
        dec_keys, dec_values = keys[rows], values[rows]
        layer.keys[plan.dec_slots, :, plan.dec_positions] = dec_keys
        layer.values[plan.dec_slots, :, plan.dec_positions] = dec_values
    for slot, offset, start, n in plan.prefills:
        layer.keys[slot, :, start : start + n] = keys[offset : offset + n].transpose(0, 1)
        layer.values[slot, :, start : start + n] = values[offset : offset + n].transpose(0, 1)


def _decode_attention(query: torch.Tensor, layer: PackedLayer, plan: StepPlan, scaling: float) -> torch.Tensor:
    """One token per sequence against the slot range's keys, as two batched matmuls over views of the
    buffers; `query` is (packed tokens, heads, dim). The query heads that share a KV head are stacked
    as rows, so GQA needs no K/V copies. When decode token i is in slot i, nothing is gathered."""
    heads, dim = query.shape[1], query.shape[2]
    keys, values = layer.keys[: plan.active, :, : plan.width], layer.values[: plan.active, :, : plan.width]
    group = heads // keys.shape[1]
    if plan.aligned:
        q = query[: plan.active]
    else:
        q = query.new_zeros(plan.active, heads, dim)
        q[plan.dec_slots] = query[plan.dec_offsets]
    # keys @ q^T, not q @ keys^T: each score's reduction over `dim` is then the same whatever the width
    # and the number of slots (measured: q @ keys^T rounds differently as the batch's width changes,
    # which made answers depend on their batch once the Linear layers round to bf16)
    grouped = q.view(plan.active, keys.shape[1], group, dim).transpose(-1, -2)
    scores = torch.matmul(keys, grouped).transpose(-1, -2) * scaling
    scores = scores.masked_fill(~plan.dec_mask, float("-inf")).softmax(-1)
    out = torch.matmul(scores, values).view(plan.active, heads, dim)
    return out if plan.aligned else out[plan.dec_slots]


def attend(query: torch.Tensor, layer: PackedLayer, scaling: float) -> torch.Tensor:
    """Attention for a packed step, `query` (packed tokens, heads, dim) → the same shape: each
    sequence's queries see only that sequence's keys. All decode queries go in one batched call."""
    plan = layer.owner.plan
    out = torch.empty_like(query)
    n = len(plan.dec_offsets)
    if n:
        decoded = _decode_attention(query, layer, plan, scaling)
        if plan.aligned:
            out[:n] = decoded
        else:
            out[plan.dec_offsets] = decoded
    for slot, offset, start, count in plan.prefills:
        total = start + count
        positions = torch.arange(total, device=query.device)
        mask = positions[None, :] <= (start + torch.arange(count, device=query.device))[:, None]
        out[offset : offset + count] = F.scaled_dot_product_attention(
            query[offset : offset + count].transpose(0, 1)[None],
            layer.keys[slot : slot + 1, :, :total],
            layer.values[slot : slot + 1, :, :total],
            attn_mask=mask,
            scale=scaling,
            enable_gqa=True,
        )[0].transpose(0, 1)
    return out


def packed_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    packed_cache: PackedCache | None = None,
    **kwargs,
):
    """`attend` as a transformers `AttentionInterface` function: `query` is (1, heads, tokens, dim)."""
    out = attend(query[0].transpose(0, 1), packed_cache.layers[module.layer_idx], scaling)
    return out[None].contiguous(), None


KV = list[tuple[torch.Tensor, torch.Tensor]]  # one (keys, values) pair per layer


def kv_from_bytes(data: bytes, shape: tuple[int, ...], dtype: str, device) -> KV:
    """The KV `PackedCache.export` wrote, as (keys, values) per layer on `device`."""
    kv = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(getattr(torch, dtype)).view(shape).to(device)
    return [(layer[0], layer[1]) for layer in kv]


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
