"""llmdbg.watch under DistributedDataParallel: a 2-process gloo run on CPU against a single process
on the whole batch. Merged activation histograms must equal the single-process ones, the gradient
norm must be the reduced (global) one, there is one collective per logged step, and only rank 0
writes TensorBoard events."""

from __future__ import annotations

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

STEPS = 3


def _model():
    import transformers as tf

    from tiny_models import CONFIGS

    torch.manual_seed(0)
    cfg = CONFIGS["gpt2"]()
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0  # deterministic across the split
    return tf.GPT2LMHeadModel(cfg).train()


def _batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    return torch.randint(3, 100, (4, 8), generator=g)


def _run(model, rank: int, world: int, log_dir):
    import llmdbg

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = llmdbg.watch(model, opt, every=1, log_dir=log_dir)
    norms = []
    for step in range(STEPS):
        ids = _batch(step)[rank::world]  # this rank's half of the batch
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        norms.append(w.step(loss=loss)["grad_norm"])
        opt.step()
        opt.zero_grad()
    w.close()
    return w, norms


def _worker(rank: int, world: int, port: int, out: str):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from llmdbg.training import distributed as D

        calls = []
        real = dist.all_reduce

        def counting(*a, **k):
            calls.append(1)
            return real(*a, **k)

        D.torch.distributed.all_reduce = counting
        ddp = torch.nn.parallel.DistributedDataParallel(_model())
        w, norms = _run(ddp, rank, world, os.path.join(out, "tb"))
        D.torch.distributed.all_reduce = real
        if rank == 0:
            torch.save(
                {"hist": w.histograms["activations"], "norms": norms, "acts": w.activations, "collectives": len(calls)},
                os.path.join(out, "rank0.pt"),
            )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_ddp_two_ranks_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "rank0.pt", weights_only=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref, ref_norms = _run(_model(), 0, 1, None)
    finally:
        torch.set_num_threads(n)
    assert got["collectives"] == STEPS  # one packed all-reduce per logged step
    assert got["norms"] == pytest.approx(ref_norms, rel=1e-5)  # the reduced, global gradient
    for block, by_step in ref.histograms["activations"].items():
        for step, counts in by_step.items():
            np.testing.assert_array_equal(got["hist"][block][step], counts, err_msg=f"{block} step {step}")
    a, b = got["acts"].set_index(["step", "module"]), ref.activations.set_index(["step", "module"])
    for col in ("mean", "std", "absmax", "count"):
        np.testing.assert_allclose(a[col].dropna().to_numpy(), b[col].dropna().to_numpy(), rtol=1e-5)
    assert (a["tokens"].dropna().to_numpy() == b["tokens"].dropna().to_numpy()).all()
    event_files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(event_files) == 1  # only rank 0 writes
