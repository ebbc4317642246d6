"""Prefix sharing: each pair's prompt computed once, for chosen and rejected together.

A paired batch reaches the model as ``(2B, L)`` rows, chosen rows then rejected rows, right-padded; row
``i`` and row ``B + i`` start with the same prompt. The split forward (:mod:`prefopt.training.batching`) already
removes most padding, but it still runs every prompt twice. Here each pair becomes one *segment*

    [shared prefix (s tokens) | chosen suffix | rejected suffix]

where ``s`` is the longest common prefix of the two rows (the prompt, plus any leading tokens the two
replies share). Position ids run ``0 … len(chosen) − 1`` over prefix + chosen and restart at ``s`` for the
rejected suffix, so every token keeps the position it has in its own row. A 4-D attention mask lets a token
see the tokens of its own segment that (a) come at or before its position and (b) are in the prefix or in
its own branch: the rejected reply sees the prompt and itself, never the chosen reply. Sliding-window layers
get the same mask with the window applied to the position difference, exactly as transformers builds it
(``kv > q − window``). Segments are packed several to a row (first-fit decreasing, row width = the longest
segment), so a packed batch holds ``Σ (len(chosen) + len(rejected) − s)`` real tokens in at most the slots
the split forward uses.

Where nothing else shapes attention (sdpa, no soft-capping, no window shorter than a branch, no activation
checkpointing), the mask is not what runs: :func:`segment_attention_forward` computes each segment's
attention as two SDPA calls on its own tokens (see "segment attention" below), all segments in one row
without padding.

The transformer body runs once on the packed rows. Its hidden states are then gathered back into the
``(2B, L, H)`` layout of the original rows (a prefix position feeds both rows, so its gradient is the sum of
both, as in the unshared forward), and **the model's own head code runs on them unchanged**: the forward
of the causal-LM class (TRL's fused LM head for DPO/IPO, the plain ``lm_head`` + logit soft-capping for
ORPO/SimPO) is called as usual, with its backbone returning the gathered states. So every per-token
output — log-probs, entropy, top-1, logits — is the same computation on the same inputs as without sharing,
up to float rounding; ``tests/training/test_prefix_sharing.py`` holds it to 1e-5 (fp32) on log-probs and gradients
for every supported architecture.

Exactness is proven per architecture (the mask and positions must mean what the model's attention
means): Llama, Mistral (sliding window), Qwen2 (sliding and full layers), Gemma-2 (alternating sliding /
full, attention-logit soft-capping, final soft-capping), with the ``sdpa`` or ``eager`` attention
implementation and the default rotary embedding. Anything else is refused when the switch is forced
(``training.prefix_sharing: true``) and left off under ``auto`` — never silently approximated. Under
DeepSpeed / FSDP it stays off under ``auto`` (a multi-call forward is not validated there).

``flex_attention`` takes the same rule as a block mask (:func:`flex_block_masks`; all segments in one row,
the empty blocks skipped). Its forward is proven exact on CPU for the same four architectures; PyTorch runs
flex attention's backward only on a GPU, so its gradients are checked only where one is present, and
``auto`` leaves it off (``true`` turns it on).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

PROVEN_ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma2")
MASK_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")
# Implementations whose forward is proven exact here but whose backward is not checked on this project's CPU
# machines (PyTorch runs flex attention's backward only on a GPU): on when forced, off under ``auto``.
UNCHECKED_BACKWARD = {
    "flex_attention": "flex attention's gradients are checked only on a GPU (PyTorch has no flex backward "
    "on CPU; tests/training/test_prefix_sharing.py runs that check where one is present)"
}
STATIC_ROPE_TYPES = (None, "default")
SETTINGS = ("auto", True, False)
_INTERCEPTED = {"input_ids", "attention_mask", "labels", "use_cache", "num_items_in_batch", "fused_lm_head"}


# ----------------------------------------------------------------------------------------- support
def _rope_type(config) -> str | None:
    for attr in ("rope_parameters", "rope_scaling"):
        params = getattr(config, attr, None)
        if isinstance(params, dict):
            return params.get("rope_type", params.get("type"))
    return None


def attn_implementation(config) -> str:
    """The attention implementation of the (text) model config, ``"eager"`` when unset."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(config, "_attn_implementation", None) or "eager"


def unsupported_reason(config) -> str | None:
    """Why prefix sharing is not proven exact for this model config (``None``: it is)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    mt = getattr(config, "model_type", None)
    if mt not in PROVEN_ARCHITECTURES:
        return (
            f"architecture {mt!r} is not among those proven exact ({', '.join(PROVEN_ARCHITECTURES)}): its attention "
            "mask, sliding windows or positions may mean something the shared mask does not reproduce"
        )
    impl = attn_implementation(config)
    if impl not in MASK_IMPLEMENTATIONS:
        return (
            f"attention implementation {impl!r} is not supported (a 4-D or block mask is needed: "
            f"{', '.join(MASK_IMPLEMENTATIONS)}); flash-attn varlen is not wired"
        )
    rope = _rope_type(config)
    if rope not in STATIC_ROPE_TYPES:
        return f"rotary scaling {rope!r} is not proven exact (only the default rotary embedding is)"
    return None


def layer_windows(config) -> tuple[str, dict[str, int | None]]:
    """How the model takes its attention mask — one tensor for every layer (``"single"``) or a dict keyed by
    layer type (``"dict"``) — and each layer type's sliding window (None: full attention)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    mt = config.model_type
    if mt == "llama":
        return "single", {"full_attention": None}
    if mt == "mistral":  # every layer slides when sliding_window is set (MistralModel: one mask function)
        return "single", {"full_attention": getattr(config, "sliding_window", None)}
    if mt in ("qwen2", "gemma2"):
        types = set(getattr(config, "layer_types", None) or ["full_attention"])
        types.add("full_attention")
        return "dict", {t: (config.sliding_window if t == "sliding_attention" else None) for t in types}
    raise ValueError(f"no mask layout for architecture {mt!r}")


# ----------------------------------------------------------------------------------------- packing
@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (rows, W)
    position_ids: torch.Tensor  # (rows, W)
    segment: torch.Tensor  # (rows, W): segment id, -1 = padding
    branch: torch.Tensor  # (rows, W): 0 prefix, 1 chosen, 2 rejected
    gather: torch.Tensor  # (2B * L,): flat index into the packed (rows * W + 1) states; rows*W = a zero row
    shared_tokens: int  # prefix tokens computed once instead of twice
    real_tokens: int  # tokens of the original rows
    packed_slots: int  # rows * W
    # per pair: (row, offset, shared prefix s, prefix + chosen length, rejected suffix length)
    segments: list[tuple[int, int, int, int, int]] = field(default_factory=list)


def right_padded_lengths(mask: torch.Tensor) -> torch.Tensor | None:
    """Each row's length when ``mask`` is a 2-D right-padded attention mask, else None (left padding or
    holes: not a batch prefopt rearranges)."""
    if mask.dim() != 2:
        return None
    lengths = mask.sum(dim=1)
    if not bool((mask.cumprod(dim=1).sum(dim=1) == lengths).all()):
        return None
    return lengths


def pack_pairs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, *, one_row: bool = False
) -> PackedBatch | None:
    """Plan the packed batch for ``(2B, L)`` right-padded rows (row ``i`` and ``B + i`` a pair), or None
    when the batch is not of that shape. ``one_row``: every segment back to back in a single row, no
    padding at all (for :func:`segment_attention_forward`, whose cost does not grow with the row)."""
    n, width = input_ids.shape
    if n < 2 or n % 2:
        return None
    lengths = right_padded_lengths(attention_mask)
    if lengths is None or bool((lengths < 1).any()):
        return None
    b = n // 2
    lens = lengths.tolist()
    c_len, r_len = lens[:b], lens[b:]
    ids_cpu = input_ids.detach().cpu()
    same = (ids_cpu[:b] == ids_cpu[b:]).int()
    cols = torch.arange(width)
    limit = torch.minimum(lengths[:b], lengths[b:]).cpu()
    same = same * (cols[None, :] < limit[:, None]).int()
    shared = same.cumprod(dim=1).sum(dim=1).tolist()
    seg_len = [c + r - s for c, r, s in zip(c_len, r_len, shared)]
    cap = sum(seg_len) if one_row else max(seg_len)
    # first-fit decreasing: pairs into rows of width `cap`
    order = sorted(range(b), key=lambda i: -seg_len[i])
    rows_fill: list[int] = []
    place: list[tuple[int, int]] = [(0, 0)] * b
    for i in order:
        for r, fill in enumerate(rows_fill):
            if fill + seg_len[i] <= cap:
                place[i] = (r, fill)
                rows_fill[r] = fill + seg_len[i]
                break
        else:
            place[i] = (len(rows_fill), 0)
            rows_fill.append(seg_len[i])
    n_rows = len(rows_fill)
    p_ids = torch.zeros(n_rows, cap, dtype=ids_cpu.dtype)
    p_pos = torch.zeros(n_rows, cap, dtype=torch.long)
    p_seg = torch.full((n_rows, cap), -1, dtype=torch.long)
    p_branch = torch.zeros(n_rows, cap, dtype=torch.long)
    gather = torch.full((n, width), n_rows * cap, dtype=torch.long)
    for i in range(b):
        row, off = place[i]
        s, c, r = shared[i], c_len[i], r_len[i]
        base = row * cap + off
        # prefix + chosen suffix: the chosen row's tokens in order; then the rejected suffix
        p_ids[row, off : off + c] = ids_cpu[i, :c]
        p_ids[row, off + c : off + c + r - s] = ids_cpu[b + i, s:r]
        p_pos[row, off : off + c] = torch.arange(c)
        p_pos[row, off + c : off + c + r - s] = torch.arange(s, r)
        p_seg[row, off : off + c + r - s] = i
        p_branch[row, off + s : off + c] = 1
        p_branch[row, off + c : off + c + r - s] = 2
        gather[i, :c] = base + torch.arange(c)
        gather[b + i, :s] = base + torch.arange(s)
        gather[b + i, s:r] = base + c + torch.arange(r - s)
    device = input_ids.device
    segments = [(*place[i], shared[i], c_len[i], r_len[i] - shared[i]) for i in range(b)]
    return PackedBatch(
        input_ids=p_ids.to(device),
        position_ids=p_pos.to(device),
        segment=p_seg.to(device),
        branch=p_branch.to(device),
        gather=gather.reshape(-1).to(device),
        shared_tokens=int(sum(shared)),
        real_tokens=int(sum(lens)),
        packed_slots=n_rows * cap,
        segments=segments,
    )


def attention_masks(
    packed: PackedBatch, config, dtype: torch.dtype
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The 4-D masks for the packed rows: one tensor, or a dict by layer type (see :func:`layer_windows`).
    Boolean (True = attend) for sdpa, additive (0 / dtype min) for eager."""
    impl = attn_implementation(config)
    if impl == "flex_attention":
        return flex_block_masks(packed, config)
    mode, windows = layer_windows(config)
    seg, pos, br = packed.segment, packed.position_ids, packed.branch
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    causal = pos[:, None, :] <= pos[:, :, None]
    branch_ok = (br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None])
    base = same & causal & branch_ok
    eye = torch.eye(seg.size(1), dtype=torch.bool, device=seg.device)[None]
    pad_q = (seg < 0)[:, :, None]
    base = base | (pad_q & eye)  # a padding query attends to itself only (no empty softmax row)
    masks: dict[str, torch.Tensor] = {}
    for layer_type, window in windows.items():
        m = base
        if window is not None:
            m = m & ((pos[:, :, None] - pos[:, None, :]) < window) | (pad_q & eye)
        m = m[:, None]  # (rows, 1, W, W)
        if impl == "eager":
            m = torch.where(m, torch.zeros((), dtype=dtype, device=m.device), torch.finfo(dtype).min)
        masks[layer_type] = m
    return masks["full_attention"] if mode == "single" else masks


def flex_mask_mod(packed: PackedBatch, window: int | None):
    """The rule of :func:`attention_masks` as a flex-attention ``mask_mod(b, h, q, kv)``: the same segment,
    at or before the query's position, in the prefix or the query's own branch, inside the window; a
    padding query sees itself only."""
    seg, pos, br = packed.segment, packed.position_ids, packed.branch

    def mask_mod(b, h, q, kv):
        seg_q, pos_q, pos_kv = seg[b, q], pos[b, q], pos[b, kv]
        m = (seg_q == seg[b, kv]) & (seg_q >= 0) & (pos_kv <= pos_q)
        m = m & ((br[b, kv] == 0) | (br[b, kv] == br[b, q]))
        if window is not None:
            m = m & ((pos_q - pos_kv) < window)
        return m | ((seg_q < 0) & (q == kv))

    return mask_mod


def flex_block_masks(packed: PackedBatch, config):
    """Block masks for ``attn_implementation="flex_attention"`` (one, or a dict by layer type): the dense
    mask's rule (:func:`flex_mask_mod`), which flex attention evaluates block-sparsely — blocks outside every
    segment are skipped, so all segments share one unpadded row at no cost in attention. Logit
    soft-capping (Gemma-2) is transformers' own ``score_mod``, applied by its flex forward as without
    sharing."""
    from torch.nn.attention.flex_attention import create_block_mask

    mode, windows = layer_windows(config)
    rows, width = packed.segment.shape
    masks = {
        layer_type: create_block_mask(
            flex_mask_mod(packed, window), rows, None, width, width, device=packed.segment.device
        )
        for layer_type, window in windows.items()
    }
    return masks["full_attention"] if mode == "single" else masks


# ----------------------------------------------------------------------------------------- segment attention
# The dense 4-D mask above is exact but makes SDPA compute every (query, key) pair of a packed row, W² per
# row and head, with no causal skipping: on long prompts that costs more attention than the two unshared
# causal rows it replaces. Where nothing but causality and the branch rule shapes the mask (sdpa, no
# sliding window reaching inside a segment, no logit soft-capping), each segment's attention is instead two
# SDPA calls on its own tokens: prefix + chosen, causal (SDPA's is_causal path), and the rejected suffix's
# queries against the prefix's and its own keys (all of the prefix, causal over itself). The same
# softmax(q·kᵀ)·v over the same keys as the mask allows, so the same outputs up to float rounding; the
# packed positions outside any segment (padding) get 0. The dense mask is still what the layers receive:
# a recomputation outside this forward (gradient checkpointing) takes the plain sdpa path on it, and
# is just as exact.
SEGMENT_ATTENTION = "prefopt_prefix_segments"
_SEGMENTS: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "prefopt_prefix_segments", default=None
)


def segment_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function (``AttentionInterface``) for packed prefix-shared rows: see above.
    ``query`` (rows, H, W, D), ``key`` / ``value`` (rows, H_kv, W, D); returns ``(rows, W, H, D)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = _SEGMENTS.get()
    if segments is None:  # not inside a prefix-shared forward: the layer's own mask means what it says
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    window = kwargs.get("sliding_window")
    longest = max(max(n1, s + r) for _row, _off, s, n1, r in segments)
    if kwargs.get("softcap") is not None or (window is not None and window < longest):
        # segment_attention_applies rules these out; the layers hold a placeholder mask, so never fall back
        raise RuntimeError("prefix sharing: segment attention reached a layer it does not apply to")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    p = dropout if module.training else 0.0
    out = query.new_zeros(query.shape)
    tril: dict[int, torch.Tensor] = {}
    for row, off, s, n1, r in segments:
        q, k, v = query[row : row + 1], key[row : row + 1], value[row : row + 1]
        a, e = off, off + n1
        out[row : row + 1, :, a:e] = F.scaled_dot_product_attention(
            q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], dropout_p=p, is_causal=True, scale=scaling
        )
        if r <= 0:
            continue
        if r not in tril:
            tril[r] = torch.ones(r, r, dtype=torch.bool, device=query.device).tril()
        mask = torch.cat([torch.ones(r, s, dtype=torch.bool, device=query.device), tril[r]], dim=1)
        ks = torch.cat([k[:, :, a : a + s], k[:, :, e : e + r]], dim=2)
        vs = torch.cat([v[:, :, a : a + s], v[:, :, e : e + r]], dim=2)
        out[row : row + 1, :, e : e + r] = F.scaled_dot_product_attention(
            q[:, :, e : e + r], ks, vs, attn_mask=mask, dropout_p=p, scale=scaling
        )
    return out.transpose(1, 2).contiguous(), None


def _register_segment_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention_forward)


def segment_attention_applies(model, longest: int) -> bool:
    """Whether :func:`segment_attention_forward` computes exactly what the dense mask means for a batch
    whose longest row has ``longest`` tokens (a segment's longer branch, prefix + chosen or prefix +
    rejected, is one of its two rows): sdpa, no attention-logit soft-capping, no sliding window shorter
    than that, and no activation checkpointing (its recomputation runs outside this forward, on the
    layers' mask)."""
    config = model.config
    if attn_implementation(config) != "sdpa":
        return False
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return False
    if any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
        return False
    _, windows = layer_windows(config)
    return all(w is None or w >= longest for w in windows.values())


@contextlib.contextmanager
def _segment_attention(config, segments):
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    _register_segment_attention()
    before = config._attn_implementation
    token = _SEGMENTS.set(segments)
    config._attn_implementation = SEGMENT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before
        _SEGMENTS.reset(token)


# ----------------------------------------------------------------------------------------- the forward
@contextlib.contextmanager
def _backbone_returns(model, output):
    """Make ``model``'s backbone return ``output`` for the duration (the head code then runs on it)."""
    backbone = model.base_model
    sentinel = object()
    previous = backbone.__dict__.get("forward", sentinel)
    backbone.forward = lambda *args, **kwargs: output
    try:
        yield
    finally:
        if previous is sentinel:
            del backbone.forward
        else:
            backbone.forward = previous


def _placeholder_masks(config, device) -> torch.Tensor | dict[str, torch.Tensor]:
    """What the layers receive under segment attention, which reads the segments instead: a 1×1 mask, so
    that a 4-D mask of the packed row (W² entries) is never built."""
    mode, windows = layer_windows(config)
    m = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device)
    return m if mode == "single" else {t: m for t in windows}


def shared_hidden_states(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    packed: PackedBatch,
    *,
    segment_attention: bool = False,
):
    """Run the backbone once on the packed rows; return the hidden states in the ``(2B, L, H)`` layout.
    ``segment_attention``: the packed batch is one row and :func:`segment_attention_forward` computes each
    segment's attention (the caller checked :func:`segment_attention_applies`); else the dense 4-D mask."""
    backbone = model.base_model
    emb = model.get_input_embeddings()
    if segment_attention:
        with _segment_attention(model.config, packed.segments):
            out = backbone(
                input_ids=packed.input_ids,
                attention_mask=_placeholder_masks(model.config, packed.input_ids.device),
                position_ids=packed.position_ids,
                use_cache=False,
            )
    else:
        masks = attention_masks(packed, model.config, emb.weight.dtype)
        out = backbone(
            input_ids=packed.input_ids,
            attention_mask=masks,
            position_ids=packed.position_ids,
            use_cache=False,
        )
    h = out.last_hidden_state
    flat = h.reshape(-1, h.size(-1))
    flat = torch.cat([flat, flat.new_zeros(1, flat.size(-1))], dim=0)
    n, width = input_ids.shape
    return flat.index_select(0, packed.gather).view(n, width, h.size(-1))


def install_prefix_sharing(model, stats: dict | None = None) -> bool:
    """Wrap ``model.forward`` (the causal-LM object, after TRL patched its LM head) so that a paired batch
    — input ids and a right-padded attention mask of ``(2B, L)``, nothing else but labels / fused-head
    flags — runs its transformer body once per pair prefix. Other calls (generation, caches, extra inputs,
    an odd number of rows, left padding) go to the original forward. Idempotent; ``stats`` (optional)
    accumulates ``shared_tokens``, ``real_tokens``, ``packed_slots`` and ``calls``."""
    if getattr(model, "_prefopt_prefix_sharing", False):
        return False
    reason = unsupported_reason(model.config)
    if reason is not None:
        raise ValueError(f"prefix sharing: {reason}")
    inner = model.forward
    from transformers.modeling_outputs import BaseModelOutputWithPast

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        call = {k: v for k, v in kwargs.items() if v is not None}  # PEFT passes its unused inputs as None
        if args:
            if len(args) > 1 or "input_ids" in call:
                return inner(*args, **kwargs)
            call["input_ids"] = args[0]
        if not set(call) <= _INTERCEPTED or call.get("use_cache") not in (None, False):
            return inner(*args, **kwargs)
        ids, mask = call.get("input_ids"), call.get("attention_mask")
        if ids is None or mask is None or ids.dim() != 2 or mask.shape != ids.shape:
            return inner(*args, **kwargs)
        # one row, no padding, under segment attention: its cost does not grow with the row
        segment_attention = segment_attention_applies(model, int(mask.sum(dim=1).max()))
        flex = (
            attn_implementation(model.config) == "flex_attention"
        )  # block-sparse: one row costs nothing extra
        packed = pack_pairs(ids, mask, one_row=segment_attention or flex)
        if packed is None:
            return inner(*args, **kwargs)
        hidden = shared_hidden_states(model, ids, mask, packed, segment_attention=segment_attention)
        if stats is not None:
            stats["calls"] = stats.get("calls", 0) + 1
            for k in ("shared_tokens", "real_tokens", "packed_slots"):
                stats[k] = stats.get(k, 0) + getattr(packed, k)
        with _backbone_returns(model, BaseModelOutputWithPast(last_hidden_state=hidden)):
            return inner(*args, **kwargs)

    model.forward = forward
    model._prefopt_prefix_sharing = True
    return True


def resolve_setting(setting: Any, config, *, sharded: bool) -> tuple[bool, str]:
    """``training.prefix_sharing`` (auto / true / false) for a model config → (on, why). A forced ``true``
    on an unproven model raises ``ValueError`` with the reason (the caller words the user's error)."""
    if setting is False:
        return False, "off (training.prefix_sharing: false)"
    reason = unsupported_reason(config)
    if setting is True:
        if reason is not None:
            raise ValueError(reason)
        return True, "on (training.prefix_sharing: true)"
    if sharded:
        return False, "off under auto: DeepSpeed / FSDP (a multi-call forward is not validated there)"
    if reason is not None:
        return False, f"off under auto: {reason}"
    unchecked = UNCHECKED_BACKWARD.get(attn_implementation(config))
    if unchecked is not None:
        return False, f"off under auto: {unchecked}; training.prefix_sharing: true turns it on"
    return True, f"on under auto: {config.model_type} is proven exact"


__all__ = [
    "PROVEN_ARCHITECTURES",
    "PackedBatch",
    "attention_masks",
    "flex_block_masks",
    "install_prefix_sharing",
    "layer_windows",
    "pack_pairs",
    "resolve_setting",
    "shared_hidden_states",
    "unsupported_reason",
]
