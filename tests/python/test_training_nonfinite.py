"""llmdbg.watch names the first module that produced a NaN/Inf, in the forward and the backward.

NaN and Inf are injected into the output (forward) or into the gradient arriving at the output
(backward) of every module that runs, in turn, on tiny GPT-2 and BERT models; the reported
module must be exactly the injected one every time: with the always-on per-module records
(``locate="always"``) and with the default replay of the step (``locate="replay"``).
"""

from __future__ import annotations

import pytest
import torch

import llmdbg
from llmdbg.training.hooks import float_tensors
from tiny_models import (
    one_thread,  # noqa: F401  (autouse fixture: tiny models on one thread)
    tiny_inputs,
    tiny_model,
)


def _poison(t: torch.Tensor, value: float) -> torch.Tensor:
    y = t.clone()
    y.view(-1)[0] = value
    return y


class _PoisonGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, value):
        ctx.value = value
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return _poison(g, ctx.value), None


def _replace_first(output, fn):
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (fn(output[0]),) + tuple(output[1:])
    if isinstance(output, dict):
        key = next(k for k, v in output.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
        output[key] = fn(output[key])
        return output
    raise AssertionError(f"unexpected output {type(output)}")


def _first_float_is_first(output) -> bool:
    if isinstance(output, torch.Tensor):
        return output.is_floating_point()
    if isinstance(output, tuple):
        return bool(output) and isinstance(output[0], torch.Tensor) and output[0].is_floating_point()
    return isinstance(output, dict)


def _loss(out) -> torch.Tensor:
    return sum(t.float().pow(2).mean() for t in float_tensors(out))


def _clean_step(model, inputs, w):
    """One finite step: backward hooks are attached once a forward has shown the output kinds."""
    loss = _loss(model(**inputs))
    loss.backward()
    w.step(loss=loss)
    # (BERT's key biases get an exactly-zero gradient, softmax is shift invariant: a true
    # vanishing-gradient event, not a failure.)
    assert not [e for e in w.events if e.severity == "critical"]
    model.zero_grad(set_to_none=True)


def _step_is_finite(model, loss) -> bool:
    """Independent check of what the cheap per-step tier sees: loss and every gradient finite."""
    return bool(torch.isfinite(loss)) and all(
        bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None
    )


def _modules_that_run(model, inputs, need_grad: bool):
    """Modules called in a forward whose first output is a float tensor (needing a gradient)."""
    seen = []
    handles = [m.register_forward_hook(lambda m, a, o, n=n: seen.append((n, o))) for n, m in model.named_modules()]
    try:
        model(**inputs)
    finally:
        for h in handles:
            h.remove()
    names = []
    for n, o in seen:
        if not _first_float_is_first(o):
            continue
        first = next(float_tensors(o), None)
        if first is None or (need_grad and not first.requires_grad):
            continue
        names.append(n)
    return list(dict.fromkeys(names))


@pytest.mark.parametrize("locate", ["always", "replay"])
@pytest.mark.parametrize("family", ["gpt2", "bert"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_first_nonfinite_module_forward(family, value, locate):
    model = tiny_model(family)
    inputs = tiny_inputs(family)
    names = _modules_that_run(model, inputs, need_grad=False)
    assert len(names) > 20
    w = llmdbg.watch(model, every=1000, on_nan="skip", locate=locate, track=("loss", "grads"))
    harmless = []
    try:
        _clean_step(model, inputs, w)
        for name in names:
            mod = model.get_submodule(name)
            h = mod.register_forward_hook(lambda m, a, o: _replace_first(o, lambda t: _poison(t, value)), prepend=True)
            try:
                model.zero_grad(set_to_none=True)
                loss = _loss(model(**inputs))
                loss.backward()
                finite = _step_is_finite(model, loss)  # before on_nan="skip" drops the gradients
                n_before = len(w.events)
                row = w.step(loss=loss)
            finally:
                h.remove()
            if locate == "replay" and finite:
                # The default checks loss and gradients only: an Inf that never reaches them
                # (tanh(inf) = 1 in BERT's pooler) is not a non-finite step.
                assert not row["nonfinite"] and not w.events[n_before:], name
                harmless.append(name)
                continue
            fwd = [e for e in w.events[n_before:] if e.kind == "nonfinite_forward"]
            assert len(fwd) == 1, (name, w.events[n_before:])
            assert fwd[0].module == name
            assert "output abs-max" in fwd[0].message
        assert len(harmless) <= 1, harmless
    finally:
        w.close()


@pytest.mark.parametrize("locate", ["always", "replay"])
@pytest.mark.parametrize("family", ["gpt2", "bert"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_first_nonfinite_module_backward(family, value, locate):
    model = tiny_model(family)
    inputs = tiny_inputs(family)
    names = _modules_that_run(model, inputs, need_grad=True)
    assert len(names) > 20
    w = llmdbg.watch(model, every=1000, on_nan="skip", locate=locate, track=("loss", "grads"))
    try:
        _clean_step(model, inputs, w)
        for name in names:
            mod = model.get_submodule(name)
            h = mod.register_forward_hook(
                lambda m, a, o: _replace_first(o, lambda t: _PoisonGrad.apply(t, value)), prepend=True
            )
            try:
                model.zero_grad(set_to_none=True)
                loss = _loss(model(**inputs))
                loss.backward()
                n_before = len(w.events)
                w.step(loss=loss)
            finally:
                h.remove()
            new = w.events[n_before:]
            assert not [e for e in new if e.kind == "nonfinite_forward"], name
            bwd = [e for e in new if e.kind == "nonfinite_backward"]
            assert len(bwd) == 1, (name, new)
            assert bwd[0].module == name, (name, bwd[0])
    finally:
        w.close()


@pytest.mark.parametrize("locate", ["always", "replay"])
def test_nonfinite_loss_gradient_is_blamed_on_the_loss(locate):
    model = tiny_model("gpt2")
    inputs = tiny_inputs("gpt2")
    with llmdbg.watch(model, on_nan="skip", locate=locate) as w:
        _clean_step(model, inputs, w)
        out = model(**inputs).last_hidden_state
        loss = _PoisonGrad.apply(out, float("nan")).sum()
        loss.backward()
        w.step(loss=loss)
        bwd = [e for e in w.events if e.kind == "nonfinite_backward"]
        assert [e.module for e in bwd] == ["(loss)"]


def test_forward_mode_arms_backward_after_the_first_bad_step():
    model = tiny_model("gpt2")
    inputs = tiny_inputs("gpt2")
    target = "h.1.mlp.c_fc"
    with llmdbg.watch(model, on_nan="skip", locate="forward") as w:
        assert not w.locator.backward
        h = model.get_submodule(target).register_forward_hook(lambda m, a, o: _PoisonGrad.apply(o, float("nan")))
        try:
            for _ in range(2):
                loss = _loss(model(**inputs))
                loss.backward()
                w.step(loss=loss)
        finally:
            h.remove()
        first, second = [[e for e in w.events if e.step == s and e.severity == "critical"] for s in (0, 1)]
        # Step 0: only parameter names (no backward records yet); step 1: the module.
        assert [e.module for e in first if e.kind == "nonfinite_gradients"] == ["h.1.mlp.c_fc.bias"]
        assert [e.module for e in second if e.kind == "nonfinite_backward"] == [target]


@pytest.mark.parametrize("mode", ["raise", "warn", "skip"])
def test_on_nan_modes(mode):
    model = tiny_model("gpt2")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = tiny_inputs("gpt2")
    before = [p.detach().clone() for p in model.parameters()]
    w = llmdbg.watch(model, opt, on_nan=mode)
    h = model.h[0].attn.register_forward_hook(
        lambda m, a, o: _replace_first(o, lambda t: _poison(t, float("nan"))), prepend=True
    )
    try:
        loss = _loss(model(**inputs))
        loss.backward()
        if mode == "raise":
            with pytest.raises(FloatingPointError, match="h.0.attn"):
                w.step(loss=loss)
        elif mode == "warn":
            with pytest.warns(RuntimeWarning, match="not finite"):
                w.step(loss=loss)
        else:
            w.step(loss=loss)
            opt.step()
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert any(e.kind == "nonfinite_forward" and e.module == "h.0.attn" for e in w.events)
    finally:
        h.remove()
        w.close()
