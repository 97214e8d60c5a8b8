"""What every watch event carries: the step's batch (kept as safetensors for severe events),
advice from the run's numbers, the rank; ``w.replay(event)`` reproduces the non-finite module;
and the model checks a watch makes before hooking anything."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pytest
import torch
import transformers as tf

import llmdbg
from llmdbg.training.batches import BatchRef, load_batch
from tiny_models import CONFIGS

POISON_TOKEN = 7  # its embedding row is set to 1e38: the first normalisation overflows


def _model(family: str):
    torch.manual_seed(0)
    cfg = CONFIGS[family]()
    for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob"):
        if hasattr(cfg, k):
            setattr(cfg, k, 0.0)
    cfg.tie_word_embeddings = False  # only the input embedding is poisoned, not the output layer
    model = tf.GPT2LMHeadModel(cfg) if family == "gpt2" else tf.BertForMaskedLM(cfg)
    with torch.no_grad():
        model.get_input_embeddings().weight[POISON_TOKEN] = 1e38
    return model.train()


def _ids(step: int, poison: bool) -> torch.Tensor:
    ids = torch.randint(10, 90, (2, 6), generator=torch.Generator().manual_seed(step))
    if poison:
        ids[1, 3] = POISON_TOKEN
    return ids


def _run(model, *, bad_step: int = 3, steps: int = 5, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w = llmdbg.watch(model, opt, every=2, on_nan="skip", **kw)
    for step in range(steps):
        ids = _ids(step, step == bad_step)
        model(input_ids=ids, labels=ids).loss.backward()
        w.step()
        opt.step()
        opt.zero_grad()
    return w


def _first_nonfinite(trace) -> str:
    """The first module (in the order modules finished) whose output statistics are not finite."""
    for key, st in trace.stats.items():
        if not key.endswith(":grad") and (st.nan_count or st.inf_count):
            return key
    raise AssertionError("no non-finite module in the replayed trace")


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_replay_of_a_kept_batch_reproduces_the_nonfinite_module(family, tmp_path):
    model = _model(family)
    w = _run(model, log_dir=tmp_path / "tb")
    fwd = [e for e in w.events if e.kind == "nonfinite_forward"]
    assert len(fwd) == 1 and fwd[0].step == 3
    ev = fwd[0]
    assert isinstance(ev.batch, BatchRef) and ev.batch.saved and ev.batch.step == 3
    assert Path(ev.batch.path).parent == tmp_path / "tb" / "batches"  # beside the log
    ((_args, kwargs),) = load_batch(ev.batch.path)
    assert torch.equal(kwargs["input_ids"], _ids(3, True))  # the bad step's own batch
    grads_before = [p.grad for p in model.parameters()]
    trace = w.replay(ev)
    assert _first_nonfinite(trace) == ev.module
    assert [p.grad for p in model.parameters()] == grads_before  # nothing accumulated
    assert len(w.state.rows) == 5  # the replay is not a step
    w.close()


def test_events_carry_advice_rank_and_are_logged_with_them(caplog, tmp_path):
    model = _model("gpt2")
    with caplog.at_level(logging.WARNING, logger="llmdbg"):
        w = _run(model, log_dir=tmp_path)
    ev = next(e for e in w.events if e.kind == "nonfinite_forward")
    assert ev.rank is None  # one process
    assert ev.advice and any("eps" in a or "normalis" in a for a in ev.advice), ev.advice
    line = next(r.getMessage() for r in caplog.records if "nonfinite_forward" in r.getMessage())
    assert line.startswith("[step 3] nonfinite_forward (critical) " + ev.module)
    assert "try: " + ev.advice[0] in line
    frame = w.events_frame()
    assert list(frame.columns) == ["step", "module", "kind", "severity", "message", "rank", "advice", "batch"]
    row = frame[frame.kind == "nonfinite_forward"].iloc[0]
    assert row["advice"] == " | ".join(ev.advice) and row["batch"] == ev.batch.path
    w.close()


def test_saved_history_keeps_batch_and_advice(tmp_path):
    w = _run(_model("gpt2"), log_dir=tmp_path / "tb")
    w.close()
    h = llmdbg.load(w.save(tmp_path / "saved"))
    assert h.events == w.events  # BatchRef, advice and rank come back equal


def test_batches_not_kept_are_described_and_refuse_replay(tmp_path):
    w = _run(_model("gpt2"), keep_batches=False)
    ev = next(e for e in w.events if e.kind == "nonfinite_forward")
    assert not ev.batch.saved and ev.batch.path is None and "keep_batches=False" in ev.batch.reason
    assert ev.batch.shapes == {"0.kwargs.input_ids": (2, 6), "0.kwargs.labels": (2, 6)}
    with pytest.raises(ValueError, match="not kept .*keep_batches=False"):
        w.replay(ev)
    frozen = llmdbg.training.Event(0, "", "loss_spike", "high", "by hand")
    with pytest.raises(ValueError, match="has no batch"):
        w.replay(frozen)
    with pytest.raises(TypeError, match="event: expected an llmdbg Event"):
        w.replay("step 3")
    w.close()


def test_auto_keeps_only_severe_events_and_without_log_dir_uses_a_temporary_directory():
    w = _run(_model("gpt2"))
    severe = [e for e in w.events if e.severity in ("high", "critical") and e.batch is not None]
    assert severe and all(e.batch.saved for e in severe)
    assert os.path.basename(os.path.dirname(severe[0].batch.path)).startswith("llmdbg-batches-")
    mild = [e for e in w.events if e.severity in ("info", "low") and e.batch is not None]
    assert all(not e.batch.saved and "severity" in e.batch.reason for e in mild)
    w.close()


def test_watch_arguments_are_checked():
    model = _model("gpt2")
    with pytest.raises(ValueError, match="keep_batches: expected 'auto', True or False"):
        llmdbg.watch(model, keep_batches="yes")
    with pytest.raises(ValueError, match="max_batch_bytes: expected a positive int"):
        llmdbg.watch(model, max_batch_bytes=0)


def test_a_model_wrapped_twice_is_refused():
    inner = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="wrapped more than once .*DataParallel around DataParallel"):
        llmdbg.watch(torch.nn.DataParallel(torch.nn.DataParallel(inner)))
    holder = torch.nn.Sequential(torch.nn.DataParallel(inner))
    with pytest.raises(ValueError, match="wrapped more than once"):
        llmdbg.watch(torch.nn.DataParallel(holder))


def test_fsdp1_is_refused_by_name():
    from torch.distributed.fsdp import FullyShardedDataParallel

    fsdp1 = FullyShardedDataParallel.__new__(FullyShardedDataParallel)  # FSDP1 needs an accelerator to build
    torch.nn.Module.__init__(fsdp1)
    with pytest.raises(TypeError, match="FSDP1 .*fully_shard"):
        llmdbg.watch(torch.nn.Sequential(fsdp1))


def test_a_distributed_model_without_a_process_group_is_refused(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 3))
    finally:
        dist.destroy_process_group()
    with pytest.raises(ValueError, match="no process group is initialised"):
        llmdbg.watch(ddp)


def test_non_tensor_batches_are_kept_as_metadata_with_a_warning(tmp_path):
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x, note):
            return self.lin(x).sum() * math.nan

    model = Odd()
    w = llmdbg.watch(model, keep_batches=True, on_nan="skip", log_dir=tmp_path)
    loss = model(torch.ones(1, 2), object())
    loss.backward()
    with pytest.warns(UserWarning, match="kept as metadata only"):
        w.step(loss=loss)
    ev = next(e for e in w.events if e.severity == "critical")
    assert not ev.batch.saved and "not tensors" in ev.batch.reason
    with pytest.raises(ValueError, match="was not kept"):
        w.replay(ev)
    w.close()


def test_a_burst_of_the_same_event_is_advised_once():
    model = _model("gpt2")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w = llmdbg.watch(model, opt, on_nan="skip", keep_batches=False)
    for step in range(4):  # the same NaN every step
        ids = _ids(step, True)
        model(input_ids=ids, labels=ids).loss.backward()
        w.step()
        opt.zero_grad()
    fwd = [e for e in w.events if e.kind == "nonfinite_forward"]
    assert [e.step for e in fwd] == [0, 1, 2, 3] and len({e.module for e in fwd}) == 1
    assert fwd[0].advice and not any(e.advice for e in fwd[1:])
    w.close()
