"""CUDA paths of the capture store: on-device statistics, reduction before the copy, pinned
asynchronous copies. These need a CUDA device; CI has none, so they run on the GPU machine
(see benchmarks/README.md) and are skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmdbg
from llmdbg import _core
from llmdbg.adapters.layout import find_layout
from tiny_models import tiny_inputs, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _reference_stats(x: np.ndarray) -> dict:
    x = x.astype(np.float64).ravel()
    fin = x[np.isfinite(x)]
    nz = np.abs(fin[fin != 0])
    return dict(
        count=x.size,
        nan_count=int(np.isnan(x).sum()),
        inf_count=int(np.isinf(x).sum()),
        zero_count=int((x == 0).sum()),
        mean=fin.mean(),
        std=fin.std(),
        min=fin.min(),
        max=fin.max(),
        histogram=np.bincount(np.clip(np.frexp(nz)[1] - 1 + 32, 0, 63), minlength=64),
    )


def _check(stats, ref):
    get = (lambda k: stats[k]) if isinstance(stats, dict) else (lambda k: getattr(stats, k))
    for k in ("count", "nan_count", "inf_count", "zero_count", "min", "max"):
        assert get(k) == ref[k], k
    np.testing.assert_allclose(get("mean"), ref["mean"], rtol=1e-9)
    np.testing.assert_allclose(get("std"), ref["std"], rtol=1e-9)
    np.testing.assert_array_equal(get("histogram"), ref["histogram"])


def test_device_summary_on_cuda_equals_numpy():
    x = torch.randn(1000, 333, device="cuda") * 1e3
    x[0, 0], x[1, 1], x[2, 2], x[3, :10] = float("nan"), float("inf"), -float("inf"), 0
    _check(_core.device_summary(x), _reference_stats(x.cpu().numpy()))


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_cuda_capture_equals_plain_hooks_and_output_attentions(family):
    model = tiny_model(family).cuda()
    inputs = {k: v.cuda() for k, v in tiny_inputs(family).items()}
    blocks = list(find_layout(model).blocks)
    # The references run under eager attention too, so everything must match bit for bit.
    model.set_attn_implementation("eager")
    ref, handles = {}, []
    for n in blocks:
        handles.append(
            model.get_submodule(n).register_forward_hook(
                lambda m, a, o, n=n: ref.__setitem__(
                    n, (o if isinstance(o, torch.Tensor) else o[0]).detach().cpu().numpy()
                )
            )
        )
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    for h in handles:
        h.remove()
    model.set_attn_implementation("sdpa")
    with llmdbg.capture(model, "blocks", attentions=True) as trace, torch.no_grad():
        model(**inputs)
    assert model.config._attn_implementation == "sdpa"
    expected = (
        [*out.encoder_attentions, *out.decoder_attentions, *out.cross_attentions]
        if family == "t5"
        else list(out.attentions)
    )
    for got, want in zip(trace.attentions, expected, strict=True):
        np.testing.assert_array_equal(got, want.cpu().numpy())
    for n in blocks:
        np.testing.assert_array_equal(trace.activations[n], ref[n])
        assert trace._store.tensors(n)[0].is_pinned()
        _check(trace.stats[n], _reference_stats(trace.activations[n]))


def test_cuda_bf16_statistics_and_head_mean_before_copy():
    model = tiny_model("llama", dtype=torch.bfloat16).cuda()
    inputs = {k: v.cuda() for k, v in tiny_inputs("llama").items()}
    with llmdbg.capture(model, "blocks", attentions=True) as full, torch.no_grad():
        model(**inputs)
    with llmdbg.capture(model, "blocks", attentions=True, reduce="head_mean") as mean, torch.no_grad():
        model(**inputs)
    for n in full.activations:
        _check(full.stats[n], _reference_stats(full.activations[n]))
    for f, m in zip(full.attentions, mean.attentions, strict=True):
        # the mean over heads ran on the device in float32 from the bf16 maps
        np.testing.assert_allclose(m, f.astype(np.float64).mean(axis=1), rtol=1e-5, atol=1e-6)
    assert mean.nbytes < full.nbytes


def test_cuda_budget_error():
    model = tiny_model("gpt2").cuda()
    inputs = {k: v.cuda() for k, v in tiny_inputs("gpt2").items()}
    with pytest.raises(llmdbg.CaptureBudgetError, match="h.1"):
        with llmdbg.capture(model, "blocks", max_bytes=2 * 7 * 32 * 4 + 1), torch.no_grad():
            model(**inputs)
