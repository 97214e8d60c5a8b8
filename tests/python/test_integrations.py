"""Sinks and framework integrations of llmdbg.watch: TensorBoard event files (read back with
TensorBoard's own EventAccumulator), the transformers.Trainer callback in a real Trainer run,
and the Lightning callback."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import llmdbg
from tiny_models import (
    CONFIGS,
    VOCAB,
    one_thread,  # noqa: F401  (autouse fixture: tiny models on one thread)
)


def _events(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def _lm(seed=0):
    torch.manual_seed(seed)
    return tf.GPT2LMHeadModel(CONFIGS["gpt2"]()).train()


def _data(n=16, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in ids]


def test_tensorboard_sink(tmp_path):
    model = _lm()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {k: torch.stack([d[k] for d in _data(4)]) for k in ("input_ids", "attention_mask", "labels")}
    with llmdbg.watch(model, opt, every=2, log_dir=tmp_path) as w:
        for _ in range(4):
            model(**batch).loss.backward()
            w.step()
            opt.step()
            opt.zero_grad()
        w.eval(3, val_loss=5.0, metrics={"accuracy": 0.25})
        w.add_embedding(torch.randn(6, 4), metadata=list("abcdef"), tag="probe")
    acc = _events(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    assert {
        "loss/train",
        "grad_norm/global",
        "lr",
        "loss/val",
        "metrics/accuracy",
        "grad_norm/transformer.h.0.mlp.c_fc.weight",
        "update_ratio/transformer.h.0.mlp.c_fc.weight",
    } <= scalars
    loss = [e.value for e in acc.Scalars("loss/train")]
    assert loss == pytest.approx(w.history["loss"].tolist(), rel=1e-6)
    hists = set(acc.Tags()["histograms"])
    assert "grads/transformer.h.0.mlp.c_fc.weight" in hists and "activations/transformer.h.0" in hists
    h = acc.Histograms("grads/transformer.h.0.mlp.c_fc.weight")
    assert [x.step for x in h] == [0, 2]
    assert h[0].histogram_value.num == w.histograms["grads"]["transformer.h.0.mlp.c_fc.weight"][0].sum()
    assert (tmp_path / "projector_config.pbtxt").exists()


def test_hf_trainer_callback_writes_tensorboard(tmp_path):
    from llmdbg.integrations.hf import DebugCallback

    model = _lm()
    cb = DebugCallback(every=2)
    args = tf.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        eval_strategy="steps",
        eval_steps=3,
        use_cpu=True,
        max_grad_norm=0.5,
        learning_rate=1e-3,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = tf.Trainer(model=model, args=args, train_dataset=_data(48), eval_dataset=_data(8, seed=1), callbacks=[cb])
    trainer.train()
    w = cb.watch
    assert w.closed and len(w.history.dropna(subset=["loss"])) == 6
    # The recorded norm is the one before clipping, i.e. what the Trainer logs as grad_norm.
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert w.history["grad_norm"].dropna().tolist() == pytest.approx(logged, rel=1e-5)
    assert w.history["val_loss"].notna().sum() == 2
    acc = _events(tmp_path / "llmdbg")
    assert len(acc.Scalars("loss/train")) == 6 and len(acc.Scalars("loss/val")) == 2
    assert any(t.startswith("grads/") for t in acc.Tags()["histograms"])


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice (workers, logging) on a toy loop
@pytest.mark.filterwarnings("ignore::FutureWarning")  # lightning 2.6 uses a deprecated torch pytree API
def test_lightning_callback(tmp_path):
    import lightning.pytorch as pl

    from llmdbg.integrations.lightning import DebugCallback

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

        def training_step(self, batch, i):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, i):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 2, (64,), generator=g))
    dl = torch.utils.data.DataLoader(ds, batch_size=16)
    cb = DebugCallback(every=2)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
    )
    trainer.fit(Tiny(), dl, dl)
    w = cb.watch
    assert len(w.history.dropna(subset=["loss"])) == 8 and w.history["val_loss"].notna().sum() == 2
    assert len(_events(tmp_path / "llmdbg").Scalars("loss/train")) == 8
