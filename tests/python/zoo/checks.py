"""The five parity checks of the zoo, each against the model's own computation.

Every check takes a tiny model and its inputs, runs one llmdbg feature and compares it with what
the model itself computes: its ``output_hidden_states``, its eager ``output_attentions``, its
logits, ``torch.nn.utils.clip_grad_norm_`` on the same backward. A check raises
``AssertionError`` on a mismatch and lets the library's own errors through (the table says which
errors are expected). ``assert_pristine`` then checks the feature left the model as it found it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import llmdbg

from .families import describe

ATOL, RTOL = 1e-5, 1e-4  # float32 tiny models; differences are rounding (~1e-7) or a bug (~1e-1)


def _close(actual: Any, expected: Any, what: str, model: Any) -> None:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected.detach().float().numpy() if torch.is_tensor(expected) else expected, dtype=np.float64)
    assert a.shape == e.shape, f"{describe(model)}: {what}: shape {a.shape} != model's {e.shape}"
    err = float(np.max(np.abs(a - e))) if a.size else 0.0
    assert np.allclose(a, e, atol=ATOL, rtol=RTOL), f"{describe(model)}: {what}: max |diff| {err:.3g}"


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


def _final_norms(model: torch.nn.Module, blocks: list[str], width: int) -> list[torch.nn.Module]:
    """Norm modules of width ``width`` outside every block: candidates for what the model applied
    after its last block before reporting ``hidden_states[-1]`` (transformers reports the final
    state there, after the final norm)."""
    inside = tuple(b + "." for b in blocks)
    return [
        m
        for name, m in model.named_modules()
        if "norm" in type(m).__name__.lower()
        and "embed" not in type(m).__name__.lower()
        and not name.startswith(inside)
        and name not in blocks
        and getattr(getattr(m, "weight", None), "shape", (width,)) == (width,)
    ]


def _normed_matches(model: torch.nn.Module, blocks: list[str], raw: np.ndarray, expected: torch.Tensor) -> bool:
    x = torch.from_numpy(raw)
    for norm in _final_norms(model, blocks, x.shape[-1]):
        try:
            with torch.no_grad():
                y = norm(x)
        except (RuntimeError, TypeError, ValueError):  # a norm with another signature: not this one
            continue
        if torch.is_tensor(y) and y.shape == expected.shape and torch.allclose(y, expected, atol=ATOL, rtol=RTOL):
            return True
    return False


def _last_entry_ok(model: torch.nn.Module, names: list[str], got: np.ndarray, hs: tuple, raw: Any) -> bool:
    """The last entry of a stack is the raw output of its last block (documented). The model
    reports either that, or its final norm of it, or (models with several residual streams per
    token: hyper-connections) the streams merged into one: then the entry must be the raw block
    output that an independent hook saw."""
    h = hs[-1]
    if got.shape == h.shape and np.allclose(got, h.numpy(), atol=ATOL, rtol=RTOL):
        return True
    if got.shape == h.shape:
        return _normed_matches(model, names, got, h)
    merged = len(hs) > 1 and h.shape != hs[-2].shape and got.shape == hs[-2].shape
    return merged and torch.is_tensor(raw) and np.allclose(got, raw.numpy(), atol=ATOL, rtol=RTOL)


def _stack_ends(modules: list[str]) -> list[str]:
    """The last block of each stack in ``trace.hidden_state_modules`` (stacks start at ":input")."""
    starts = [i for i, m in enumerate(modules) if m.endswith(":input")] + [len(modules)]
    return [modules[end - 1] for end in starts[1:]]


def blocks(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """``capture(model, "blocks", hidden_states=True).hidden_states`` equals the model's
    ``output_hidden_states``: every entry, embedding output first, stack by stack (the last
    entry of each stack as :func:`_last_entry_ok` explains)."""
    with llmdbg.capture(model, "blocks", hidden_states=True) as trace, torch.no_grad():
        model(**inputs)
    stacks = _hf_stacks_of(model, inputs)
    got = list(trace.hidden_states)
    expected = [h for _, hs in stacks for h in hs]
    assert len(got) == len(expected), (
        f"{describe(model)}: {len(got)} captured hidden states, the model reports {len(expected)} "
        f"({', '.join(f'{s}: {len(hs)}' for s, hs in stacks)})"
    )
    modules = list(trace.hidden_state_modules)
    ends = _stack_ends(modules)
    raw = _raw_outputs(model, ends, inputs)
    names = [m for m in modules if not m.endswith(":input")]
    if len(stacks) == 1 and _without_embeddings(got, stacks[0][1]):
        # transformers' Mamba, FalconMamba and RWKV report every block output, then the final
        # norm of the last one, and no embedding output: check that entry against the first
        # block's input as our own hook sees it, and compare the rest shifted by one.
        first = _raw_outputs(model, [modules[0].removesuffix(":input")], inputs, pre=True)[0]
        _close(got[0], first, "embedding output (the first block's input)", model)
        got = got[1:] + [got[-1]]
    i = 0
    for k, (stack, hs) in enumerate(stacks):
        for j, h in enumerate(hs[:-1]):
            _close(got[i + j], h, f"{stack} hidden_states[{j}]", model)
        i += len(hs)
        assert _last_entry_ok(model, names, got[i - 1], hs, raw[k] if k < len(raw) else None), (
            f"{describe(model)}: {stack} hidden_states[{len(hs) - 1}] ({tuple(hs[-1].shape)}) matches "
            f"neither the captured last block output ({got[i - 1].shape}) nor a final norm of it"
        )


def _without_embeddings(got: list[np.ndarray], hs: tuple) -> bool:
    """The model's hidden_states start with the first block's output (not the embeddings)."""

    def same(a: np.ndarray, b: torch.Tensor) -> bool:
        return a.shape == b.shape and np.allclose(a, b.numpy(), atol=ATOL, rtol=RTOL)

    return len(got) > 2 and not same(got[0], hs[0]) and same(got[1], hs[0]) and same(got[-1], hs[-2])


def _hf_stacks_of(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[tuple[str, tuple]]:
    """(stack, the model's hidden_states), encoder first."""
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    if getattr(out, "encoder_hidden_states", None) is not None:
        return [("encoder", out.encoder_hidden_states), ("decoder", out.decoder_hidden_states)]
    assert out.hidden_states is not None, f"{describe(model)} reports no hidden_states"
    return [("model", out.hidden_states)]


def _raw_outputs(
    model: torch.nn.Module, names: list[str], inputs: dict[str, torch.Tensor], *, pre: bool = False
) -> list[Any]:
    """The first tensor each named module returned (its last call), or with ``pre`` received
    (positionally or as ``hidden_states``), seen by our own hooks."""
    seen: dict[str, Any] = {}

    def first(values: Any) -> Any:
        return values if torch.is_tensor(values) else next((v for v in values if torch.is_tensor(v)), None)

    def hook(name: str) -> Callable[..., None]:
        def record(module: Any, args: Any, output: Any) -> None:
            seen[name] = first(output)

        def record_input(module: Any, args: Any, kwargs: Any) -> None:
            seen[name] = first(args) if args else kwargs.get("hidden_states")

        return record_input if pre else record

    handles = [
        model.get_submodule(n).register_forward_pre_hook(hook(n), with_kwargs=True)
        if pre
        else model.get_submodule(n).register_forward_hook(hook(n))
        for n in names
    ]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return [seen.get(n) for n in names]


def _hf_attentions(model: torch.nn.Module, out: Any) -> list[torch.Tensor]:
    """The eager model's maps: self-attention layer by layer (encoder, then decoder), then
    cross-attention. Each must be a (B, H, T_q, T_k) softmax map."""
    if getattr(out, "encoder_attentions", None) is not None:
        maps = [*out.encoder_attentions, *out.decoder_attentions, *(out.cross_attentions or ())]
    else:
        maps = [a for a in (out.attentions or ()) if a is not None]
    for a in maps:
        assert torch.is_tensor(a) and a.ndim == 4, (
            f"{describe(model)}: the model's own attentions are not (B, H, T_q, T_k) maps "
            f"({type(a).__name__} {tuple(getattr(a, 'shape', ()))}); llmdbg must refuse, naming the family"
        )
    return maps


def maps(model: Any, inputs: dict[str, torch.Tensor]) -> None:
    """``capture(..., attentions=True)`` (default ``attention_impl="auto"``: the model keeps its
    own kernel) equals the eager model's ``output_attentions``, layer by layer, self-attention
    then cross-attention."""
    with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
        model(**inputs)
    got = trace.attentions
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            expected = _hf_attentions(model, model(**inputs, output_attentions=True))
    finally:
        model.set_attn_implementation(impl)
    types = getattr(model.config, "layer_types", None) or ()
    if len(expected) == len(types) and any("linear" in t for t in types):
        # MiniMax reports an entry for its linear-attention layers too: those have no softmax map.
        expected = [e for e, t in zip(expected, types, strict=True) if "linear" not in t]
    assert len(got) == len(expected), f"{describe(model)}: {len(got)} captured maps, eager gives {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        _close(g, e, f"attention map {i}", model)


def lens(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """The logit lens' last row (after the last block) is the model's own next-token
    distribution: softmax of its logits, every vocabulary entry."""
    with torch.no_grad():
        logits = _logits(model(**inputs)).float()
    vocab = logits.shape[-1]
    res = llmdbg.logit_lens(model, inputs, top_k=vocab, progress=False)
    probs = np.zeros(res.top_probs.shape[1:], dtype=np.float64)
    np.put_along_axis(probs, res.top_ids[-1], res.top_probs[-1], axis=-1)
    _close(probs, torch.softmax(logits, dim=-1), "lens last row vs softmax(logits)", model)


def _loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of every output position towards token 3 (some models emit more or fewer
    positions than they were given: Perceiver's decoder queries)."""
    logits = _logits(model(**inputs)).float().flatten(0, -2)
    return F.cross_entropy(logits, torch.full(logits.shape[:1], 3))


def watch(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """The global gradient norm ``llmdbg.watch`` records for a step equals what
    ``clip_grad_norm_`` returns on the same gradients. Runs in train mode, as training does
    (Reformer refuses a backward in eval mode)."""
    flags = [m.training for m in model.modules()]
    model.train()
    try:
        with llmdbg.watch(model, every=1) as w:
            loss = _loss(model, inputs)
            loss.backward()
            w.step(loss=loss)
            params = [p for p in model.parameters() if p.grad is not None]
            expected = float(torch.nn.utils.clip_grad_norm_(params, max_norm=float("inf")))
        recorded = float(w.history["grad_norm"].iloc[0])
    finally:
        model.zero_grad(set_to_none=True)
        for m, flag in zip(model.modules(), flags, strict=True):
            m.training = flag
    assert expected > 0, f"{describe(model)}: the loss gave no gradient"
    assert np.isclose(recorded, expected, rtol=1e-5), (
        f"{describe(model)}: watch recorded grad norm {recorded}, clip_grad_norm_ gives {expected}"
    )


def patch(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Patching a run with its own block outputs reproduces its logits (every block, all
    positions at once); restoring the last block of a clean run into a corrupted one gives the
    clean logits."""
    seen: list[torch.Tensor] = []

    def metric(out: Any) -> torch.Tensor:
        seen.append(_logits(out).detach().clone())
        return _logits(out).float().mean()

    with torch.no_grad():
        clean = _logits(model(**inputs))
    corrupted = {**inputs, "input_ids": inputs["input_ids"].flip(-1)}
    res = llmdbg.patch(model, inputs, inputs, metric=metric, modules="blocks", positions="joint", progress=False)
    assert seen, f"{describe(model)}: the metric was never called"
    for i, s in enumerate(seen):
        _close(s, clean, f"patch identity, run {i}", model)
    seen.clear()
    llmdbg.patch(model, inputs, corrupted, metric=metric, modules="blocks", positions="joint", progress=False)
    _close(seen[-1], clean, f"restoring {res.modules[-1]} of the clean run", model)


FEATURES: dict[str, Callable[[torch.nn.Module, dict[str, torch.Tensor]], None]] = {
    "blocks": blocks,
    "maps": maps,
    "lens": lens,
    "watch": watch,
    "patch": patch,
}


def _forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor], **flags: bool) -> None:
    with torch.no_grad():
        model(**inputs, **flags)


def _eager_attentions(model: Any, inputs: dict[str, torch.Tensor]) -> None:
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        _forward(model, inputs, output_attentions=True)
    finally:
        model.set_attn_implementation(impl)


def _backward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    flags = [m.training for m in model.modules()]
    model.train()
    try:
        _loss(model, inputs).backward()
    finally:
        model.zero_grad(set_to_none=True)
        for m, flag in zip(model.modules(), flags, strict=True):
            m.training = flag


# What each feature is compared against, computed by the model alone (no llmdbg): for the
# table's Upstream entries, where transformers itself fails.
REFERENCES: dict[str, Callable[[torch.nn.Module, dict[str, torch.Tensor]], None]] = {
    "blocks": lambda model, inputs: _forward(model, inputs, output_hidden_states=True),
    "maps": _eager_attentions,
    "lens": _forward,
    "watch": _backward,
    "patch": _forward,
}


def snapshot(model: torch.nn.Module) -> dict[str, Any]:
    """What a feature must leave unchanged: hooks, attention implementation, train/eval flags,
    requires_grad, gradients."""
    return {
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
            for m in model.modules()
        ),
        "attn": getattr(model.config, "_attn_implementation", None),
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": sum(p.grad is not None for p in model.parameters()),
    }
