"""The default ``locate="replay"``: no per-module hooks while training; a non-finite step is
replayed with temporary hooks that are gone afterwards, with the same dropout masks, without
touching gradients or the caller's random streams, and before ``optimizer.step()``.

(The per-module NaN/Inf injection sweep over tiny GPT-2 and BERT, in forward and backward, runs
in both modes in test_training_nonfinite.py.)
"""

from __future__ import annotations

import logging

import pytest
import torch

import llmdbg
from test_training_nonfinite import _loss, _poison, _PoisonGrad, _replace_first
from tiny_models import (
    one_thread,  # noqa: F401  (autouse fixture: tiny models on one thread)
    tiny_inputs,
    tiny_model,
)


def _hooks(model, *, root: bool = True) -> int:
    """Number of module hooks of every kind (the root module's too unless ``root=False``)."""
    n = 0
    for name, m in model.named_modules():
        if name or root:
            n += sum(
                len(getattr(m, a))
                for a in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
            )
    return n


def _poison_fwd(model, name, value=float("nan")):
    return model.get_submodule(name).register_forward_hook(
        lambda m, a, o: _replace_first(o, lambda t: _poison(t, value)), prepend=True
    )


def _poison_bwd(model, name, value=float("nan")):
    return model.get_submodule(name).register_forward_hook(
        lambda m, a, o: _replace_first(o, lambda t: _PoisonGrad.apply(t, value)), prepend=True
    )


def test_default_is_replay_without_module_hooks():
    model = tiny_model("gpt2")
    inputs = tiny_inputs("gpt2")
    assert _hooks(model) == 0
    w = llmdbg.watch(model, on_nan="skip", track=("loss", "grads"))
    assert w.locate == "replay" and w.locator is None
    assert _hooks(model, root=False) == 0  # only a pre-hook and a hook on the root module
    base = _hooks(model)
    h = _poison_bwd(model, "h.1.attn.c_proj")
    try:
        loss = _loss(model(**inputs))
        loss.backward()
        w.step(loss=loss)
    finally:
        h.remove()
    assert [e.module for e in w.events if e.kind == "nonfinite_backward"] == ["h.1.attn.c_proj"]
    assert _hooks(model) == base  # the replay's hooks are gone
    w.close()
    assert _hooks(model) == 0


def test_replay_leaves_gradients_and_random_streams_alone():
    model = tiny_model("gpt2").train()  # dropout 0.1 everywhere
    inputs = tiny_inputs("gpt2")
    w = llmdbg.watch(model, on_nan="warn", track=("loss", "grads"))
    masks: list[torch.Tensor] = []
    rec = model.h[0].attn.resid_dropout.register_forward_hook(lambda m, a, o: masks.append(o.detach() == 0))
    h = _poison_bwd(model, "h.1.mlp.c_proj")  # finite forward: replayed twice (forward, then backward)
    try:
        torch.manual_seed(123)
        loss = _loss(model(**inputs))
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        with pytest.warns(RuntimeWarning, match="h.1.mlp.c_proj"):
            w.step(loss=loss)
        after = torch.rand(4)
    finally:
        h.remove()
        rec.remove()
        w.close()
    torch.manual_seed(123)
    model(**inputs)  # the same forward without the watch, to see where the stream would be
    assert torch.equal(after, torch.rand(4))
    assert len(masks) == 3  # the step, then the replay's two forward passes
    assert masks[0].any() and all(torch.equal(masks[0], m) for m in masks[1:])  # same dropout mask
    for a, p in zip(grads, model.parameters()):  # .grad untouched by the replay's backward
        torch.testing.assert_close(p.grad, a, rtol=0, atol=0, equal_nan=True)


def test_gradient_accumulation_replays_every_micro_batch():
    model = tiny_model("gpt2")
    first, second = tiny_inputs("gpt2", length=7), tiny_inputs("gpt2", length=5, seed=2)
    # NaN in the backward of the second micro-batch only (sequence length 5).
    h = model.h[1].mlp.c_fc.register_forward_hook(
        lambda m, a, o: _PoisonGrad.apply(o, float("nan")) if o.shape[1] == 5 else o
    )
    w = llmdbg.watch(model, on_nan="skip", track=("loss", "grads"))
    try:
        total = 0.0
        for inputs in (first, second):
            loss = _loss(model(**inputs)) / 2
            loss.backward()
            total += loss.detach()
        w.step(loss=total)
    finally:
        h.remove()
        w.close()
    assert [e.module for e in w.events if e.kind == "nonfinite_backward"] == ["h.1.mlp.c_fc"]


@pytest.mark.parametrize("mode", ["skip", "raise"])
def test_optimizer_step_before_watch_step_is_checked_first(mode):
    model = tiny_model("gpt2")
    inputs = tiny_inputs("gpt2")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    w = llmdbg.watch(model, opt, on_nan=mode, track=("loss", "grads"))
    h = _poison_bwd(model, "h.0.mlp.c_proj")
    try:
        loss = _loss(model(**inputs))
        loss.backward()
        if mode == "raise":
            with pytest.raises(FloatingPointError, match="h.0.mlp.c_proj"):
                opt.step()
        else:
            opt.step()  # the wrong order: the pre-hook locates before the weights change
            w.step(loss=loss)
    finally:
        h.remove()
        w.close()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no NaN update
    assert [e.module for e in w.events if e.kind == "nonfinite_backward"] == ["h.0.mlp.c_proj"]


def test_watch_step_first_leaves_the_optimizer_hook_idle():
    model = tiny_model("gpt2")
    inputs = tiny_inputs("gpt2")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = llmdbg.watch(model, opt, track=("loss", "grads"))
    for _ in range(2):
        loss = _loss(model(**inputs))
        loss.backward()
        w.step(loss=loss)
        opt.step()
        opt.zero_grad()
    assert w.state.early is None and len(w.history) == 2 and not w.history["nonfinite"].any()
    w.close()
    loss = _loss(model(**inputs))
    loss.backward()
    opt.step()  # the hook was removed with the watch


def test_failed_replay_falls_back_to_parameter_names(caplog):
    model = tiny_model("gpt2")
    inputs = tiny_inputs("gpt2")
    calls = []

    def poison_then_fail(m, a, o):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("boom")
        return _PoisonGrad.apply(o, float("nan"))

    w = llmdbg.watch(model, on_nan="skip", track=("loss", "grads"))
    base = _hooks(model)
    h = model.h[0].mlp.c_fc.register_forward_hook(poison_then_fail)
    try:
        loss = _loss(model(**inputs))
        loss.backward()
        with caplog.at_level(logging.WARNING, logger="llmdbg"):
            w.step(loss=loss)
    finally:
        h.remove()
    assert "replaying step 0" in caplog.text and "boom" in caplog.text
    assert [e.module for e in w.events if e.kind == "nonfinite_gradients"] == ["h.0.mlp.c_fc.bias"]
    assert _hooks(model) == base
    w.close()


def test_inputs_that_cannot_be_replayed_are_not_replayed():
    from llmdbg.training.replay import ForwardRecord

    class Cache:  # e.g. a key/value cache a forward would extend
        pass

    assert ForwardRecord((torch.ones(2),), {"mask": None, "n": 3, "t": (torch.ones(1),)}, None).ok
    assert not ForwardRecord((), {"past_key_values": Cache()}, None).ok


def test_replay_keeps_the_autocast_setting():
    model = tiny_model("gpt2")
    inputs = tiny_inputs("gpt2")
    dtypes = []
    rec = model.h[0].mlp.c_fc.register_forward_hook(lambda m, a, o: dtypes.append(o.dtype))
    h = _poison_bwd(model, "h.1.mlp.c_fc")
    w = llmdbg.watch(model, on_nan="skip", track=("loss", "grads"))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model(**inputs))
        loss.backward()
        w.step(loss=loss)
    finally:
        h.remove()
        rec.remove()
        w.close()
    assert dtypes == [torch.bfloat16] * 3  # the step and both replay passes ran under autocast
    assert [e.module for e in w.events if e.kind == "nonfinite_backward"] == ["h.1.mlp.c_fc"]
