"""Property tests (hypothesis) of every non-t-SNE ``_core`` entry point and the public functions
that wrap them: dtypes, strides, empty and large shapes, extreme magnitudes, NaN/Inf, duplicates.

The invariant everywhere: the result equals a plain numpy/networkx/torch reference
(_core_references.py), or the call raises ValueError/TypeError naming the argument. Never a
crash, a hang, a C++ backtrace or a pybind11 signature dump. Example counts come from the shared
profiles (_hypothesis_profiles.py: 25 by default, 500 with LLMDBG_HYPOTHESIS_PROFILE=thorough).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import _core_references as ref
import _hypothesis_profiles  # noqa: F401 - registers and loads the profile
import llmdbg
from llmdbg import _core

# ---- strategies and checks -------------------------------------------------------------------

FLOAT_DTYPES = st.sampled_from([np.float32, np.float64])
ANY_DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.int32, np.bool_, np.complex64])
THREADS = st.one_of(st.integers(-3, 8), st.sampled_from([0, 100_000, 2**31, 10**30, -(10**30)]))


def named_error(excinfo: pytest.ExceptionInfo, *names: str) -> None:
    """A ValueError/TypeError that names one of `names`, with no signature dump or backtrace."""
    message = str(excinfo.value)
    assert excinfo.type in (ValueError, TypeError), (excinfo.type, message)
    assert any(n in message for n in names), message
    assert "incompatible function arguments" not in message and "frame #" not in message, message


def float_values(dtype, extreme: bool = True) -> st.SearchStrategy[float]:
    """Finite floats of `dtype`, from subnormal to the largest magnitude (float64 kept below
    1e150 so that sums and squares of a few thousand stay finite, as in any real tensor)."""
    width = 32 if dtype == np.float32 else 64
    bound = float(np.finfo(np.float32).max) if width == 32 else 1e150
    if not extreme:
        bound = 1e6
    return st.floats(-bound, bound, width=width, allow_nan=False, allow_infinity=False)


@st.composite
def float_arrays(draw, min_dims=0, max_dims=4, max_side=9, specials=True):
    """Float arrays with NaN/Inf and repeated values, sometimes a non-contiguous view."""
    dtype = draw(FLOAT_DTYPES)
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side))
    elements = float_values(dtype)
    if specials:
        elements = st.one_of(elements, st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0]))
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    if x.ndim and draw(st.booleans()):
        x = np.repeat(x, 2, axis=-1)[..., ::2]  # same values, stride 2
    return x


@st.composite
def attention_stacks(draw, max_t=6, same_dtype=False, same_heads=False):
    """(layers, mask): row-stochastic (B, H_l, T, T) maps (softmax rows, duplicated rows, one-hot
    rows and causal maps), each layer float32 or float64, and a (B, T) 0/1 mask or None."""
    n_layers = draw(st.integers(1, 3))
    b, t = draw(st.integers(1, 2)), draw(st.integers(1, max_t))
    dtype0 = draw(FLOAT_DTYPES)
    heads0 = draw(st.integers(1, 3))
    causal = draw(st.booleans())
    layers = []
    for _ in range(n_layers):
        h = heads0 if same_heads else draw(st.integers(1, 3))
        dtype = dtype0 if same_dtype else draw(FLOAT_DTYPES)
        logits = draw(hnp.arrays(np.float64, (b, h, t, t), elements=st.floats(-30, 30)))
        if causal:
            logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        layers.append((e / e.sum(-1, keepdims=True)).astype(dtype))
    mask = None
    if draw(st.booleans()):
        mask = draw(hnp.arrays(np.uint8, (b, t), elements=st.integers(0, 1)))
        mask[:, draw(st.integers(0, t - 1))] = 1  # every sequence keeps a real token
    return layers, mask


# ---- statistics ------------------------------------------------------------------------------


@given(x=float_arrays(), threads=THREADS)
def test_summarize_equals_numpy(x, threads):
    if not x.flags.c_contiguous:
        with pytest.raises(ValueError) as e:
            _core.summarize(x, threads)
        return named_error(e, "summarize: array")
    got, want = _core.summarize(x, threads), ref.summary(x)
    for key in ("count", "finite_count", "nan_count", "inf_count", "zero_count"):
        assert got[key] == want[key], key
    np.testing.assert_array_equal(got["histogram"], want["histogram"])
    scale = float(np.abs(x[np.isfinite(x)]).max()) if want["finite_count"] else 1.0
    for key in ("mean", "min", "max"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12 * scale, err_msg=key)
    np.testing.assert_allclose(got["var"], want["var"], rtol=1e-9, atol=1e-9 * scale**2)
    public = llmdbg.summarize(np.ascontiguousarray(x))
    assert public.count == want["count"] and public.nan_count == want["nan_count"]


@given(dtype=ANY_DTYPES)
def test_summarize_refuses_other_dtypes_by_name(dtype):
    x = np.zeros(4, dtype=dtype)
    if dtype in (np.float32, np.float64):
        assert _core.summarize(x)["zero_count"] == 4
        return
    with pytest.raises(TypeError) as e:
        _core.summarize(x)
    named_error(e, "summarize: array must be float32 or float64")


@given(x=float_arrays(min_dims=1, max_dims=3), with_min=st.booleans(), threads=THREADS)
def test_row_sums_equal_numpy(x, with_min, threads):
    if not x.flags.c_contiguous:
        with pytest.raises(ValueError) as e:
            _core.attention_row_sums(x, threads, with_min=with_min)
        return named_error(e, "attention_row_sums: array")
    got = _core.attention_row_sums(x, threads, with_min=with_min)
    sums = got[0] if with_min else got
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float64).sum(-1)
    assert sums.shape == x.shape[:-1]
    np.testing.assert_allclose(sums, want, rtol=1e-9, atol=0, equal_nan=True)
    if with_min and x.shape[-1] > 0:
        clean = ~np.isnan(x).any(-1)
        np.testing.assert_array_equal(got[1][clean], x.min(-1)[clean].astype(np.float64))


# ---- attention graph: rollout and flow -------------------------------------------------------


@given(
    stack=attention_stacks(),
    fusion=st.sampled_from(["mean", "max", "min"]),
    residual=st.booleans(),
    discard=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
    rows=st.booleans(),
    threads=THREADS,
)
def test_rollout_equals_the_reference(stack, fusion, residual, discard, rows, threads):
    layers, mask = stack
    t = layers[0].shape[-1]
    r = np.arange(t)[::-1][: max(1, t // 2)].copy() if rows else None
    got = _core.attention_rollout(
        layers, mask=mask, rows=r, head_fusion=fusion, residual=residual, discard_ratio=discard, num_threads=threads
    )
    want = ref.rollout(layers, mask, r, fusion, residual, discard)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@given(stack=attention_stacks(max_t=4), fusion=st.sampled_from(["mean", "max", "min"]), rows=st.booleans())
def test_flow_equals_networkx(stack, fusion, rows):
    layers, mask = stack
    t = layers[0].shape[-1]
    r = np.array([t - 1]) if rows else None
    got = _core.attention_flow(layers, mask=mask, rows=r, head_fusion=fusion)
    np.testing.assert_allclose(got, ref.flow(layers, mask, r, fusion), atol=1e-5)


@given(stack=attention_stacks(max_t=5, same_dtype=True))
def test_public_rollout_and_flow_over_arrays_equal_the_reference(stack):
    layers, _ = stack
    got = llmdbg.attention_rollout([np.asarray(a) for a in layers])
    np.testing.assert_allclose(got, ref.rollout(layers), atol=2e-5, rtol=1e-5)
    if layers[0].shape[-1] <= 4:
        np.testing.assert_allclose(llmdbg.attention_flow(layers), ref.flow(layers), atol=1e-5)


@given(
    stack=attention_stacks(max_t=5),
    bad=st.sampled_from([-1e-3, -0.5, np.nan, np.inf, -np.inf]),
    data=st.data(),
)
def test_graph_and_head_kernels_refuse_bad_weights_at_real_positions(stack, bad, data):
    layers, mask = stack
    t = layers[0].shape[-1]
    real = np.flatnonzero(mask[0]) if mask is not None else np.arange(t)
    li = data.draw(st.integers(0, len(layers) - 1))
    i, j = data.draw(st.sampled_from(real)), data.draw(st.sampled_from(real))
    layers[li][0, 0, i, j] = bad
    for call in (
        lambda: _core.attention_rollout(layers, mask=mask),
        lambda: _core.attention_flow(layers, mask=mask, rows=np.array([i])),
    ):
        with pytest.raises(ValueError) as e:
            call()
        named_error(e, f"layers[{li}] holds")
    same = [a.astype(np.float64) for a in layers]
    with pytest.raises(ValueError) as e:
        _core.attention_head_stats(same, mask, None, 1)
    named_error(e, f"layers[{li}] holds")


@given(
    stack=attention_stacks(max_t=4),
    mask_value=st.sampled_from([2, 256, -1, 0.5, np.nan]),
)
def test_masks_other_than_zero_one_are_refused(stack, mask_value):
    layers, _ = stack
    b, t = layers[0].shape[0], layers[0].shape[-1]
    mask = np.ones((b, t))
    mask[0, 0] = mask_value
    with pytest.raises(ValueError) as e:
        _core.attention_rollout(layers, mask=mask)
    named_error(e, "attention_rollout: mask")


@given(
    shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),
    dtype=ANY_DTYPES,
    contiguous=st.booleans(),
)
def test_malformed_layers_are_named(shape, dtype, contiguous):
    a = np.ones(shape, dtype=dtype)
    if not contiguous and a.ndim:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    ok = len(shape) == 4 and min(shape) > 0 and shape[2] == shape[3] and dtype in (np.float32, np.float64)
    ok = ok and a.flags.c_contiguous
    if ok:
        a = a / a.shape[-1]  # uniform rows: valid maps
        assert _core.attention_rollout([a]).shape == (shape[0], shape[2], shape[2])
        return
    with pytest.raises((ValueError, TypeError)) as e:
        _core.attention_rollout([a])
    named_error(e, "attention_rollout: layers[0]")


# ---- per-head statistics and drift -----------------------------------------------------------


@given(stack=attention_stacks(same_dtype=True), special=st.booleans(), threads=THREADS)
def test_head_stats_equal_the_reference(stack, special, threads):
    layers, mask = stack
    b, t = layers[0].shape[0], layers[0].shape[-1]
    sp = (np.arange(b * t).reshape(b, t) % 3 == 0).astype(np.uint8) if special else None
    got = _core.attention_head_stats(layers, mask, sp, threads)
    want = ref.head_stats(layers, mask, sp)
    for key in ("entropy", "max_weight", "upper_max", "special_mass", "sink_all"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=1e-6, err_msg=key)
    np.testing.assert_array_equal(got["queries"], want["queries"])


@given(stack=attention_stacks(same_dtype=True), threads=THREADS)
def test_js_divergence_equals_the_reference(stack, threads):
    layers, mask = stack
    other = [np.ascontiguousarray(a[:, :, :, ::-1]) for a in layers]  # keys reversed: still rows of 1
    got = _core.attention_js_divergence(layers, other, mask, threads)
    np.testing.assert_allclose(got, ref.js_divergence(layers, other, mask), atol=1e-7)
    np.testing.assert_allclose(_core.attention_js_divergence(layers, layers, mask, threads)[np.isfinite(got)], 0.0)


# ---- attention from queries and keys ---------------------------------------------------------


@given(
    b=st.integers(1, 2),
    groups=st.integers(1, 2),
    hkv=st.integers(1, 2),
    tq=st.integers(1, 6),
    extra=st.integers(0, 3),
    d=st.integers(1, 8),
    causal=st.booleans(),
    window=st.integers(0, 3),
    scale=st.sampled_from([1e-3, 0.125, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_qk_attention_equals_softmax_reference(b, groups, hkv, tq, extra, d, causal, window, scale, seed):
    rng = np.random.default_rng(seed)
    tk = tq + extra
    q = rng.standard_normal((b, groups * hkv, tq, d)).astype(np.float32)
    k = rng.standard_normal((b, hkv, tk, d)).astype(np.float32)
    got = _core.qk_attention(q, k, scaling=scale, causal=causal, window=window, offset=extra, maps=True)
    qt, kt = torch.from_numpy(q).double(), torch.from_numpy(k).double().repeat_interleave(groups, dim=1)
    w = qt @ kt.transpose(-1, -2) * scale
    pos, j = torch.arange(tq)[:, None] + extra, torch.arange(tk)[None, :]
    keep = torch.ones(tq, tk, dtype=torch.bool)
    if causal:
        keep &= j <= pos
    if window:
        keep &= j > pos - window
    p = torch.softmax(w.masked_fill(~keep, -torch.inf), -1)
    p = torch.where(keep.any(-1, keepdim=True), p, 0.0).nan_to_num(0.0)
    np.testing.assert_allclose(got["maps"], p.numpy(), atol=1e-5)


@given(bad=st.sampled_from([np.nan, np.inf]), which=st.sampled_from(["q", "k"]))
def test_qk_attention_refuses_non_finite_inputs_by_name(bad, which):
    q, k = np.ones((1, 2, 3, 4), np.float32), np.ones((1, 1, 3, 4), np.float32)
    (q if which == "q" else k)[0, 0, 1, 2] = bad
    with pytest.raises(ValueError) as e:
        _core.qk_attention(q, k, scaling=1.0, stats=True)
    named_error(e, f"{which} holds NaN or inf")


# ---- integrated gradients: quadrature and kernels --------------------------------------------


@given(
    method=st.sampled_from(
        ["riemann_left", "riemann_right", "riemann_middle", "trapezoid", "captum_trapezoid", "gausslegendre"]
    ),
    n=st.integers(-5, 200),
)
def test_quadrature_equals_the_reference_or_names_n_steps(method, n):
    least = 2 if "trapezoid" in method else 1
    if n < least:
        with pytest.raises(ValueError) as e:
            _core.quadrature(method, n)
        return named_error(e, "n_steps must be >=")
    nodes, weights = _core.quadrature(method, n)
    want_nodes, want_weights = ref.quadrature(method, n)
    np.testing.assert_allclose(nodes, want_nodes, atol=1e-13)
    np.testing.assert_allclose(weights, want_weights, atol=1e-13)


@given(n=st.one_of(st.integers(2, 64), st.sampled_from([10**6 + 1, 2**31, 10**40, -(2**70)])))
def test_clenshaw_curtis_integrates_polynomials_exactly_or_names_n(n):
    if not 2 <= n <= 10_000:
        with pytest.raises(ValueError) as e:
            _core.quadrature("clenshaw_curtis", n)
        return named_error(e, "n_steps must be", "quadrature: n")
    nodes, weights = _core.quadrature("clenshaw_curtis", n)
    for degree in range(n):  # exact up to degree n - 1
        assert float(weights @ nodes**degree) == pytest.approx(1 / (degree + 1), abs=1e-12)


@given(level=st.integers(-3, 8))
def test_patterson_levels_nest_or_name_the_level(level):
    if not 0 <= level <= _core.PATTERSON_MAX_LEVEL:
        with pytest.raises(ValueError) as e:
            _core.patterson_quadrature(level)
        return named_error(e, "level")
    nodes, weights = _core.patterson_quadrature(level)
    assert len(nodes) == [5, 11, 23, 47, 95][level] and weights.sum() == pytest.approx(1.0)
    if level:
        np.testing.assert_array_equal(nodes[: [5, 11, 23, 47][level - 1]], _core.patterson_quadrature(level - 1)[0])


@given(
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    k=st.integers(0, 4),
    dtype=st.sampled_from(["float32", "float64", "float16", "bfloat16", "int8"]),
    seed=st.integers(0, 2**16),
)
def test_ig_path_equals_torch_or_names_the_argument(shape, k, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    base, diff = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    alphas = torch.rand(k, generator=g)
    call = lambda: _core.ig_path(base, diff, alphas, dtype)
    if len(shape) == 0 or k == 0 or dtype == "int8":
        with pytest.raises(ValueError) as e:
            call()
        return named_error(e, "ig_path: baseline", "ig_path: alphas", "dtype")
    want = (base[None] + alphas.view(-1, *[1] * len(shape)) * diff[None]).reshape(k * shape[0], *shape[1:])
    got = call()
    assert got.dtype == getattr(torch, dtype)
    torch.testing.assert_close(got, want.to(got.dtype))


@given(g=st.integers(1, 2), b=st.integers(1, 3), k=st.integers(1, 3), n=st.integers(0, 4), rows=st.booleans())
def test_ig_accumulate_equals_torch(g, b, k, n, rows):
    acc = torch.randn(g, b, n)
    r = torch.tensor(list(range(b))[::-1][: max(1, b - 1)]) if rows else None
    width = len(r) if rows else b
    grads, weights = torch.randn(g, k * width, n), torch.rand(k)
    want = acc.clone()
    contrib = torch.einsum("k,gkrn->grn", weights, grads.view(g, k, width, n))
    if rows:
        want.index_add_(1, r, contrib)
    else:
        want += contrib
    _core.ig_accumulate(acc, grads, weights, r)
    torch.testing.assert_close(acc, want)


# ---- data profiling --------------------------------------------------------------------------

WORDS = st.sampled_from(["a", "b", "The", "über", "naïve", "x1", "😀", "tok_" * 5, ""])
SPACES = st.sampled_from([" ", "  ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "\x1c", "\r\n"])
TEXTS = st.lists(
    st.lists(st.tuples(WORDS, SPACES), max_size=8).map(lambda ws: "".join(w + s for w, s in ws)), max_size=30
)


@given(texts=TEXTS, threads=THREADS, duplicate=st.booleans())
def test_whitespace_counts_and_groups_equal_python(texts, threads, duplicate):
    if duplicate and texts:
        texts = texts + texts[::2]
    tokens, counts, lengths = _core.count_whitespace_tokens(texts, threads)
    want_tokens, want_counts, want_lengths = ref.whitespace_counts(texts)
    assert tokens == want_tokens and counts.tolist() == want_counts and lengths.tolist() == want_lengths
    assert _core.duplicate_groups(texts, threads).tolist() == ref.duplicate_groups(texts)
    p_tokens, _, _, groups = _core.profile_whitespace(texts, threads)
    assert p_tokens == want_tokens and groups.tolist() == ref.duplicate_groups(texts)
    if texts:
        public = llmdbg.data.profile(texts, n_jobs=1, progress=False)
        assert public.n_tokens == sum(want_counts)
        assert public.n_duplicates == len(texts) - len(set(texts))


@given(bad=st.sampled_from([None, b"bytes", 3, 1.5, "\ud800"]), at=st.integers(0, 3))
def test_texts_that_are_not_utf8_str_are_named(bad, at):
    texts = ["a b"] * 4
    texts[at] = bad
    for call in (_core.count_whitespace_tokens, _core.duplicate_groups, _core.profile_whitespace):
        with pytest.raises((TypeError, ValueError)) as e:
            call(texts)
        named_error(e, f"texts[{at}]")


@given(
    ids=st.lists(st.integers(-3, 40), max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=5),
    vocab=st.one_of(st.integers(1, 45), st.sampled_from([0, -1, 2**32 + 1, 2**63 - 1, 10**30])),
    threads=THREADS,
)
def test_count_ids_equals_bincount_or_names_the_problem(ids, cuts, vocab, threads):
    flat = np.array(ids, dtype=np.int64)
    offsets = np.array([0, *sorted(c for c in cuts if c <= len(ids)), len(ids)], dtype=np.int64)
    if not 1 <= vocab <= 2**32 or (flat.size and (flat.min() < 0 or flat.max() >= vocab)):
        with pytest.raises(ValueError) as e:
            _core.count_ids(flat, offsets, vocab, threads)
        return named_error(e, "count_ids: vocab_size", "count_ids: token id")
    counts, lengths = _core.count_ids(flat, offsets, vocab, threads)
    np.testing.assert_array_equal(counts, np.bincount(flat, minlength=vocab))
    np.testing.assert_array_equal(lengths, np.diff(offsets))


@given(texts=TEXTS.filter(bool), labels=st.booleans())
def test_duplicate_summary_equals_the_reference(texts, labels):
    texts = texts + texts[:3]
    groups = _core.duplicate_groups(texts)
    codes = np.arange(len(texts), dtype=np.int64) % 2 if labels else None
    got = [a.tolist() for a in _core.duplicate_summary(groups, codes)]
    assert got == list(ref.duplicate_summary(groups, codes))
    broken = groups.copy()
    broken[-1] = len(texts)  # not a first occurrence
    with pytest.raises(ValueError) as e:
        _core.duplicate_summary(broken)
    named_error(e, "duplicate_summary: groups")


@given(items=st.lists(st.one_of(st.integers(-(2**70), 2**70), st.booleans(), st.floats()), max_size=12))
def test_int64_array_takes_exact_int64s_only(items):
    got = _core.int64_array(items)
    fits = all(type(i) is int and -(2**63) <= i < 2**63 for i in items)
    if fits:
        np.testing.assert_array_equal(got, np.array(items, dtype=np.int64).reshape(-1))
    else:
        assert got is None


# ---- capture store ---------------------------------------------------------------------------


@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]),
    out=st.sampled_from(["float32", "float64", "bfloat16"]),
    head_dim=st.integers(-1, 4),
    token_dim=st.integers(-1, 4),
    start=st.integers(-6, 6),
    stop=st.one_of(st.integers(-6, 6), st.just(2**63 - 1)),
    seed=st.integers(0, 2**16),
)
def test_capture_store_equals_torch_slicing_and_means(shape, dtype, out, head_dim, token_dim, start, stop, seed):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 10).to(dtype)
    store = _core.CaptureStore(0, out)
    add = lambda: store.add("k", x, head_dim=head_dim, token_dim=token_dim, token_start=start, token_stop=stop)
    if token_dim >= x.dim() or head_dim >= x.dim():
        with pytest.raises(ValueError) as e:
            add()
        return named_error(e, "dimension")
    add()
    want = x
    if token_dim >= 0:
        want = want[(slice(None),) * token_dim + (slice(start, stop),)]
    if head_dim >= 0:
        want = (
            want.float().mean(head_dim)
            if not want.dtype.is_floating_point or want.dtype.itemsize < 4
            else want.mean(head_dim)
        )
    (got,) = store.tensors("k")
    torch.testing.assert_close(got, want.to(getattr(torch, out)), equal_nan=True)
    summary, wanted = store.summary("k"), ref.summary(x.double().numpy())
    assert summary["count"] == wanted["count"] and summary["zero_count"] == wanted["zero_count"]
