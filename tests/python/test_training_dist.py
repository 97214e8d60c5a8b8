"""llmdbg.watch under 2 gloo processes on CPU: DDP statistics equal one process on the global
batch (merged activation histograms bin for bin, the global gradient norm, one collective per
logged step, only rank 0 writing TensorBoard); no hang when one rank's step is not finite (DDP);
FSDP2 (``fully_shard``) statistics reduced across shards equal one process on the global batch,
with a NaN located to its module and rank through the replay; the Trainer and Lightning callbacks
under FSDP2.

Each configuration is one ``mp.spawn`` whose workers write what they saw to a JSON file; the
process group has a 60 s timeout, so a rank left waiting in a collective fails the test instead
of hanging it.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))

STEPS = 4
POISON = {"step": -1}  # the step at which rank 1's forward makes a NaN (-1: none)


def _model(family: str = "gpt2"):
    import transformers as tf

    from tiny_models import CONFIGS

    torch.manual_seed(0)
    cfg = CONFIGS[family]()
    for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob"):
        if hasattr(cfg, k):
            setattr(cfg, k, 0.0)  # deterministic across the split
    cls = tf.GPT2LMHeadModel if family == "gpt2" else tf.AutoModelForMaskedLM
    return (cls(cfg) if family == "gpt2" else cls.from_config(cfg)).train()


def _batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    return torch.randint(3, 100, (4, 8), generator=g)


def _poison(module, rank: int, current: dict) -> None:
    """Rank ``rank``'s ``module`` returns NaN at ``POISON["step"]`` (also when the step is replayed)."""

    def hook(mod, args, out):
        if current["step"] == POISON["step"] and dist.get_rank() == rank:
            return out * math.nan
        return out

    module.register_forward_hook(hook)


def _poison_backward(module, rank: int, current: dict) -> None:
    """Rank ``rank``'s gradient at ``module``'s output turns NaN at ``POISON["step"]``."""

    def hook(mod, args, out):
        t = out[0] if isinstance(out, tuple) else out
        if current["step"] == POISON["step"] and dist.get_rank() == rank and t.requires_grad:
            t.register_hook(lambda g: g * math.nan)

    module.register_forward_hook(hook)


def _train(model, inner, rank: int, world: int, *, every: int, record=None, **watch_kw):
    import llmdbg

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = llmdbg.watch(model, opt, every=every, **{"detectors": ["nonfinite"], **watch_kw})
    current = {"step": -1}
    if record == "backward":
        _poison_backward(inner.transformer.h[0].mlp, 1, current)
    elif record is not None:
        _poison(inner.transformer.h[1].mlp, 1, current)
    rows = []
    for step in range(STEPS):
        current["step"] = step
        ids = _batch(step)[rank::world]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        rows.append(w.step(loss=loss))
        if not rows[-1]["nonfinite"]:
            opt.step()
        opt.zero_grad()
    w.close()
    return w, rows


def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))


def _events(w) -> list[dict]:
    return [{"step": e.step, "kind": e.kind, "module": e.module, "rank": e.rank} for e in w.events]


def _ddp_equal_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    try:
        from llmdbg.training import distributed as D

        calls = []
        real = dist.all_reduce

        def counting(*a, **k):
            calls.append(1)
            return real(*a, **k)

        D.torch.distributed.all_reduce = counting
        inner = _model()
        w, rows = _train(
            torch.nn.parallel.DistributedDataParallel(inner),
            inner,
            rank,
            world,
            every=1,
            detectors="default",
            log_dir=os.path.join(out, "tb"),
        )
        D.torch.distributed.all_reduce = real
        if rank == 0:
            hist = {b: {str(k): v.tolist() for k, v in by.items()} for b, by in w.histograms["activations"].items()}
            Path(out, "ddp_equal.json").write_text(
                json.dumps(
                    {
                        "hist": hist,
                        "norms": [r["grad_norm"] for r in rows],
                        "acts": w.activations.to_dict("list"),
                        "collectives": len(calls),
                    }
                )
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_ddp_two_ranks_equal_single_process(tmp_path):
    mp.spawn(_ddp_equal_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = json.loads((tmp_path / "ddp_equal.json").read_text())
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model()
        ref, ref_rows = _train(model, model, 0, 1, every=1, detectors="default")
    finally:
        torch.set_num_threads(n)
    assert got["collectives"] == STEPS  # one packed all-reduce per (logged) step
    assert got["norms"] == pytest.approx([r["grad_norm"] for r in ref_rows], rel=1e-5)  # the global norm
    for block, by_step in ref.histograms["activations"].items():
        for step, counts in by_step.items():
            np.testing.assert_array_equal(got["hist"][block][str(step)], counts, err_msg=f"{block} step {step}")
    import pandas as pd

    a = pd.DataFrame(got["acts"]).set_index(["step", "module"])
    b = ref.activations.set_index(["step", "module"])
    for col in ("mean", "std", "absmax", "count"):
        np.testing.assert_allclose(a[col].dropna().to_numpy(), b[col].dropna().to_numpy(), rtol=1e-5)
    assert (a["tokens"].dropna().to_numpy() == b["tokens"].dropna().to_numpy()).all()
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1  # only rank 0 writes


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    try:
        inner = _model()
        ddp = torch.nn.parallel.DistributedDataParallel(inner)
        POISON["step"] = 1  # a step that is not logged (every=2) ...
        w1, rows1 = _train(ddp, inner, rank, world, every=2, record=True)
        POISON["step"] = 2  # ... and one that is: rank 0 must not wait alone in the stats collective
        w2, rows2 = _train(ddp, inner, rank, world, every=2, record=True)
        Path(out, f"ddp{rank}.json").write_text(
            json.dumps(
                {
                    "events": [_events(w1), _events(w2)],
                    "nonfinite": [[r["nonfinite"] for r in rows1], [r["nonfinite"] for r in rows2]],
                }
            )
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_ddp_nan_on_one_rank_neither_hangs_nor_hides(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"ddp{r}.json").read_text()) for r in range(2)]
    assert got[0] == got[1]  # both ranks finished and report the same events
    for run, poisoned in zip(range(2), (1, 2)):
        assert got[0]["nonfinite"][run] == [s == poisoned for s in range(STEPS)]
        fwd = [e for e in got[0]["events"][run] if e["kind"] == "nonfinite_forward"]
        assert fwd == [{"step": poisoned, "kind": "nonfinite_forward", "module": "transformer.h.1.mlp", "rank": 1}]


# -- FSDP2 ---------------------------------------------------------------------------------------
def _shard(model):
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    return model


def _summary(w, rows) -> dict:
    hist = {name: {str(k): v.tolist() for k, v in by.items()} for name, by in w.histograms["grads"].items()}
    layers = w.layers
    return {
        "grad_norm": [r["grad_norm"] for r in rows],
        "loss": [r["loss"] for r in rows],
        "layer_grad_norm": layers["grad_norm"].tolist(),
        "weight_norm": layers["weight_norm"].tolist(),
        "update_ratio": layers["update_ratio"].tolist(),
        "layer_names": layers["layer"].tolist(),
        "grad_hist": hist,
        "events": _events(w),
    }


def _fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    try:
        POISON["step"] = -1
        model = _shard(_model())
        w, rows = _train(model, model, rank, world, every=1)
        clean = _summary(w, rows)
        POISON["step"] = 2
        model = _shard(_model())
        w, rows = _train(model, model, rank, world, every=2, record=True)
        model = _shard(_model())
        wb, _ = _train(model, model, rank, world, every=2, record="backward")
        Path(out, f"fsdp{rank}.json").write_text(
            json.dumps(
                {
                    "clean": clean,
                    "poisoned": _events(w),
                    "nonfinite": [r["nonfinite"] for r in rows],
                    "backward": _events(wb),
                }
            )
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_fsdp2_reduced_statistics_equal_one_process_and_nan_is_located(tmp_path):
    mp.spawn(_fsdp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"fsdp{r}.json").read_text()) for r in range(2)]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        POISON["step"] = -1
        model = _model()
        ref = _summary(*_train(model, model, 0, 1, every=1))
    finally:
        torch.set_num_threads(n)
    for g in got:
        c = g["clean"]
        assert c["layer_names"] == ref["layer_names"]
        for key in ("grad_norm", "loss", "layer_grad_norm", "weight_norm"):
            np.testing.assert_allclose(c[key], ref[key], rtol=1e-5, err_msg=key)
        a, b = np.array(c["update_ratio"], float), np.array(ref["update_ratio"], float)
        np.testing.assert_allclose(a[~np.isnan(b)], b[~np.isnan(b)], rtol=1e-4)
        for name, by in ref["grad_hist"].items():
            for step, counts in by.items():
                # Bins count the non-zero elements of the global gradient; the sharded run's
                # reduce-scatter rounds differently, which moves a few tiny values across a bin
                # edge (or to exactly zero).
                mine = np.array(c["grad_hist"][name][step])
                assert np.abs(mine - counts).sum() <= max(2, 0.02 * sum(counts)), f"{name} step {step}"
    assert got[0]["poisoned"] == got[1]["poisoned"]
    assert got[0]["nonfinite"] == [s == 2 for s in range(STEPS)]
    fwd = [e for e in got[0]["poisoned"] if e["kind"] == "nonfinite_forward"]
    assert fwd == [{"step": 2, "kind": "nonfinite_forward", "module": "transformer.h.1.mlp", "rank": 1}]
    assert got[0]["backward"] == got[1]["backward"]
    bwd = [e for e in got[0]["backward"] if e["kind"] == "nonfinite_backward"]
    assert [(e["step"], e["rank"]) for e in bwd] == [(2, 1)], got[0]["backward"]
    assert bwd[0]["module"].startswith("transformer.h.0.mlp"), bwd  # where the gradient turned NaN
    assert not [e for e in got[0]["backward"] if e["kind"] == "nonfinite_forward"]


# -- the callbacks under FSDP2 ---------------------------------------------------------------------
def _global_norm(model) -> float:
    """The global gradient norm from the DTensors themselves (an independent reference)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _callbacks_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    try:
        import lightning.pytorch as pl
        from lightning.pytorch.strategies import ModelParallelStrategy

        from llmdbg.integrations.hf import DebugCallback as HFCallback
        from llmdbg.integrations.lightning import DebugCallback as PLCallback

        # HF Trainer: on the CPU it turns FSDP off (use_cpu), so its callback hooks are driven by hand
        model = _shard(_model())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        hf = HFCallback(every=1, log_dir=False)
        args, state = type("A", (), {"max_grad_norm": 1.0})(), type("S", (), {"is_world_process_zero": rank == 0})()
        hf.on_train_begin(args, state, None, model=model, optimizer=opt)
        hf_ref = []
        for step in range(2):
            ids = _batch(step)[rank::world]
            model(input_ids=ids, labels=ids).loss.backward()
            hf_ref.append(_global_norm(model))
            hf.on_pre_optimizer_step(args, state, None)
            opt.step()
            opt.zero_grad()
        hf.on_train_end(args, state, None)

        class Lit(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.m = _model()

            def configure_model(self):
                _shard(self.m)

            def training_step(self, batch, i):
                return self.m(input_ids=batch, labels=batch).loss

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        pl_ref: list[float] = []

        class Reference(pl.Callback):
            def on_before_optimizer_step(self, trainer, module, optimizer):
                pl_ref.append(_global_norm(module))

        cb = PLCallback(every=1, log_dir=False)
        data = torch.utils.data.DataLoader(list(_batch(0)) * 2, batch_size=2)
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=world,
            strategy=ModelParallelStrategy(),
            max_steps=2,
            callbacks=[cb, Reference()],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=out,
        )
        trainer.fit(Lit(), data)
        Path(out, f"cb{rank}.json").write_text(
            json.dumps(
                {
                    "hf": [r["grad_norm"] for r in hf.watch.state.rows],
                    "hf_ref": hf_ref,
                    "hf_sharded": hf.watch.state.sharded,
                    "pl": [r["grad_norm"] for r in cb.watch.state.rows],
                    "pl_ref": pl_ref,
                    "pl_sharded": cb.watch.state.sharded,
                }
            )
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_trainer_and_lightning_callbacks_under_fsdp2(tmp_path):
    mp.spawn(_callbacks_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"cb{r}.json").read_text()) for r in range(2)]
    for g in got:
        assert g["hf_sharded"] and g["pl_sharded"]
        np.testing.assert_allclose(g["hf"], g["hf_ref"], rtol=1e-5)  # global, not this rank's shard
        assert len(g["pl"]) == 2
        np.testing.assert_allclose(g["pl"], g["pl_ref"], rtol=1e-5)
    assert got[0]["pl"] == got[1]["pl"] and got[0]["hf"] == got[1]["hf"]
