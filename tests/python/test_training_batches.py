"""BatchStore / load_batch: a step's forwards saved as one safetensors file and rebuilt exactly."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch
import transformers as tf

from llmdbg.training import batches as B
from llmdbg.training.batches import BatchRef, BatchStore, batch_ids, load_batch
from pickle_free import no_unpickling  # noqa: F401  (fixture)
from tiny_models import (
    CONFIGS,
    one_thread,  # noqa: F401  (autouse fixture: tiny models on one thread)
    tiny_inputs,
)


def _same(a, b) -> None:
    """Structure, container types, dtypes, shapes and values all equal (NaN equal to NaN)."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and b.device.type == "cpu"
        assert b.is_contiguous()
        assert torch.equal(a.detach().cpu(), b) or (a.is_floating_point() and torch.allclose(a, b, equal_nan=True))
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_round_trip_reruns_the_same_forward(tmp_path, family, no_unpickling):  # noqa: F811
    torch.manual_seed(0)
    cls = tf.GPT2LMHeadModel if family == "gpt2" else tf.BertForMaskedLM
    model = cls(CONFIGS[family]()).eval()
    inp = tiny_inputs(family)
    batch = {**inp, "labels": inp["input_ids"].clone()}
    batch["labels"][0, :2] = -100
    # the second forward passes one tensor under two names (labels=input_ids, as HF examples do)
    forwards = [((), batch), ((), {**batch, "input_ids": batch["input_ids"], "labels": batch["input_ids"]})]
    ref = BatchStore(tmp_path).keep(7, 1, forwards)
    assert ref == BatchRef(
        step=7,
        rank=1,
        path=str(tmp_path / "batch-step7-rank1.safetensors"),
        ids=None,
        shapes={f"{i}.kwargs.{k}": (2, 7) for i in range(2) for k in ("input_ids", "attention_mask", "labels")},
        saved=True,
        reason="",
    )
    assert os.listdir(tmp_path) == ["batch-step7-rank1.safetensors"]
    assert (tmp_path / "batch-step7-rank1.safetensors").read_bytes()[:1] != b"\x80"  # not a pickle
    assert hash(ref) == hash(dataclasses.replace(ref))  # an Event holding it stays hashable
    got = load_batch(ref.path)
    _same(forwards, got)
    with torch.no_grad():  # the model's own outputs agree on the rebuilt batch
        for (_, k0), (_, k1) in zip(forwards, got):
            a, b = model(**k0), model(**k1)
            assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)


def test_nested_structures_scalars_and_dtypes(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g)
    args = (
        x.t(),  # not contiguous: saved in logical order
        [torch.arange(5, dtype=torch.int32), (torch.ones(2, dtype=torch.bool), None)],
        {"bf": torch.randn(2, 2, generator=g).to(torch.bfloat16), "h": torch.randn(3, generator=g).half()},
    )
    kwargs = {
        "scale": 0.1,
        "nan": math.nan,
        "big": 2**70,
        "flag": True,
        "mode": "train",
        "dtype": torch.float16,
        "device": torch.device("cpu"),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "nested": {1: [torch.tensor([-1, 2], dtype=torch.int8)], "a.b": {"c": [1, 2.5, "x"]}},
        "grad": torch.randn(2, requires_grad=True, generator=g),
    }
    forwards = [(args, kwargs), ((torch.tensor([math.inf, -math.inf, math.nan]),), {})]
    ref = BatchStore(tmp_path).keep(0, 0, forwards)
    assert ref.saved and ref.shapes["0.args.0"] == (4, 3) and ref.shapes["0.kwargs.nested.1.0"] == (2,)
    got = load_batch(ref.path)
    _same(forwards, got)
    assert not got[0][1]["grad"].requires_grad


def test_describe_and_device(tmp_path):
    forwards = [((), {"input_ids": torch.ones(2, 5, dtype=torch.long), "idx": torch.tensor([8, 9]), "c": _Cache()})]
    ref = B.describe(12, 1, forwards, reason="not kept (keep_batches=False)")  # no warning, nothing written
    assert ref == BatchRef(
        12,
        1,
        None,
        (8, 9),
        {"0.kwargs.input_ids": (2, 5), "0.kwargs.idx": (2,)},
        False,
        "not kept (keep_batches=False)",
    )
    path = BatchStore(tmp_path).keep(0, 0, [((torch.arange(3.0),), {})]).path
    ((args, _),) = load_batch(path, device="meta")
    assert args[0].device.type == "meta" and args[0].shape == (3,)


def test_batch_ids():
    assert batch_ids({"input_ids": torch.ones(2, 3, dtype=torch.long)}) is None  # token ids are not example ids
    assert batch_ids({"idx": torch.tensor([4, 9])}) == (4, 9)
    assert batch_ids({"example_ids": ["a", "b"], "index": torch.tensor([1.5])}) == ("a", "b")
    assert batch_ids({"index": 3}) == (3,)
    assert batch_ids({"ids": torch.ones(2, 2, dtype=torch.long)}) is None  # 2-D: token ids, not examples
    assert batch_ids([1, 2]) is None
    assert batch_ids({"ids": [True]}) is None
    assert batch_ids({"idx": torch.tensor([True, False])}) is None


def test_ids_travel_into_the_ref(tmp_path):
    store = BatchStore(tmp_path)
    ref = store.keep(3, 0, [((), {"x": torch.ones(1), "idx": torch.tensor([5, 6])}), (({"idx": [7]},), {})])
    assert ref.ids == (5, 6, 7)
    _same(load_batch(ref.path)[1][0], ({"idx": [7]},))


class _Cache:
    def __repr__(self) -> str:
        return "Cache(" + "x" * 500 + ")"


def test_non_tensor_batch_is_metadata_only(tmp_path):
    store = BatchStore(tmp_path)
    forwards = [((torch.ones(2, 3),), {"past_key_values": _Cache(), "sparse": torch.eye(2).to_sparse()})]
    with pytest.warns(UserWarning, match=r"metadata only.*0\.kwargs\.past_key_values \(.*_Cache: Cache\(x+\.\.\.\)"):
        ref = store.keep(4, 0, forwards)
    assert not ref.saved and ref.path is None and ref.shapes == {"0.args.0": (2, 3)}
    assert "_Cache" in ref.reason and "sparse_coo" in ref.reason and len(ref.reason) < 400
    assert os.listdir(tmp_path) == []
    with pytest.warns(UserWarning, match=r"0\.kwargs\.t \(numpy\.float64"):  # would come back as a float
        assert not store.keep(5, 0, [((), {"t": np.float64(0.5)})]).saved


def test_cap(tmp_path):
    store = BatchStore(tmp_path, max_bytes=1000)
    small = store.keep(0, 0, [((torch.zeros(250),), {})])  # exactly 1000 bytes
    assert small.saved
    with pytest.warns(UserWarning, match=r"1\.0 KiB \(1004 bytes\) is over the cap max_bytes=1000"):
        big = store.keep(1, 0, [((torch.zeros(250),), {"y": torch.zeros(1)})])
    assert not big.saved and big.path is None and "max_bytes=1000" in big.reason
    assert big.shapes == {"0.args.0": (250,), "0.kwargs.y": (1,)}
    assert os.listdir(tmp_path) == ["batch-step0-rank0.safetensors"]


def test_write_is_atomic(tmp_path, monkeypatch):
    store = BatchStore(tmp_path)
    old = store.keep(2, 0, [((torch.zeros(3),), {})])

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(B.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.keep(2, 0, [((torch.ones(3),), {})])
    assert os.listdir(tmp_path) == ["batch-step2-rank0.safetensors"]  # no temporary left behind
    _same(load_batch(old.path), [((torch.zeros(3),), {})])  # the previous file is intact
    monkeypatch.setattr(B.os, "fsync", crash)
    with pytest.raises(OSError):
        store.keep(9, 0, [((torch.ones(3),), {})])
    assert os.listdir(tmp_path) == ["batch-step2-rank0.safetensors"]


def test_load_errors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(ValueError, match="no batch file"):
        load_batch(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_batch(bad)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not an llmdbg batch"):
        load_batch(other)
    broken = tmp_path / "broken.safetensors"
    save_file(
        {"w": torch.zeros(2)}, str(broken), metadata={"format": "llmdbg-batch", "version": "1", "structure": "[{"}
    )
    with pytest.raises(ValueError, match="corrupt batch structure"):
        load_batch(broken)
    save_file(
        {}, str(broken), metadata={"format": "llmdbg-batch", "version": "1", "structure": '[{"args":{"k":"tensor"}}]'}
    )
    with pytest.raises(ValueError, match="corrupt"):
        load_batch(broken)
    save_file({}, str(broken), metadata={"format": "llmdbg-batch", "version": "2", "structure": "[]"})
    with pytest.raises(ValueError, match="version '2'; this llmdbg reads 1"):
        load_batch(broken)
    with pytest.raises(TypeError, match="path"):
        load_batch(3)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="directory"):
        BatchStore(None)
    with pytest.raises(ValueError, match="max_bytes"):
        BatchStore(tmp_path, max_bytes=0)
    store = BatchStore(tmp_path)
    with pytest.raises(TypeError, match=r"forwards\[0\]"):
        store.keep(0, 0, [({"input_ids": torch.ones(1)},)])
    with pytest.raises(TypeError, match="forwards"):
        store.keep(0, 0, "x")
    with pytest.raises(ValueError, match="step"):
        store.keep(-1, 0, [])
