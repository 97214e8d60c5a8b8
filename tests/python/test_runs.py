"""llmdbg.run: records against hand-written references, data forms, bad records, resume after
SIGKILL, job identity, the output format, and the Ray engine against the local one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf

import llmdbg
from llmdbg.runs import open_run, run
from tiny_models import CONFIGS, minilm_tokenizer, one_thread  # noqa: F401

HERE = os.path.dirname(__file__)
TEXTS = [
    "the cat sat on the mat",
    "a dog",
    "language models predict the next token from the ones before it",
    "short",
    "one more sentence about debugging models on whole datasets",
    "tokens and heads",
    "the end",
]
LABELS = [0, 1, 1, 0, 1, 0, 1]


def _vocab() -> int:
    return minilm_tokenizer().vocab_size


def classifier(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = CONFIGS["bert"]()
    cfg.vocab_size, cfg.num_labels = _vocab(), 2
    cfg.max_position_embeddings = 64
    return tf.BertForSequenceClassification(cfg).eval()


def causal_lm(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = tf.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=_vocab(), n_positions=64, bos_token_id=1, eos_token_id=2
    )
    return tf.GPT2LMHeadModel(cfg).eval()


def _go(model, data, out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("batch_size", 3)
    kw.setdefault("shard_size", 3)
    return run(model, minilm_tokenizer(), data, out=out, **kw)


# -- records against independent references ---------------------------------------------------------


def test_classifier_records_match_a_hand_written_loop(tmp_path):
    """Each example alone (no padding) through the model's own outputs: hidden states,
    eager attention weights, logits; statistics in numpy float64."""
    model = classifier()
    tok = minilm_tokenizer()
    res = _go(
        model,
        pd.DataFrame({"text": TEXTS, "label": LABELS}),
        tmp_path / "r",
        tasks=("stats", "embedding", "attention", "loss"),
    )
    df = res.records()
    assert df["example_id"].tolist() == list(range(len(TEXTS)))
    assert (df["status"] == "ok").all()
    model.set_attn_implementation("eager")
    for i, text in enumerate(TEXTS):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True, output_attentions=True)
        row = df.iloc[i]
        hs = [h[0].double().numpy() for h in out.hidden_states]
        np.testing.assert_allclose(row["stats_mean"], [h.mean() for h in hs], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row["stats_std"], [h.std() for h in hs], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row["stats_absmax"], [np.abs(h).max() for h in hs], rtol=1e-6)
        assert list(row["stats_nan"]) == [0] * len(hs) and row["first_nonfinite_layer"] == -1
        np.testing.assert_allclose(row["embedding"], hs[-1].mean(0), rtol=1e-5, atol=1e-6)
        att = np.stack([a[0].double().numpy() for a in out.attentions])  # (L, H, T, T)
        ent = -(att * np.log(np.where(att > 0, att, 1))).sum(-1).mean(-1)
        np.testing.assert_allclose(np.reshape(row["attention_entropy"], ent.shape), ent, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.reshape(row["attention_max_prob"], ent.shape), att.max(-1).mean(-1), atol=1e-5)
        np.testing.assert_allclose(np.reshape(row["attention_sink_mass"], ent.shape), att[..., 0].mean(-1), atol=1e-5)
        logp = torch.log_softmax(out.logits[0].double(), -1)
        assert row["loss"] == pytest.approx(-float(logp[LABELS[i]]), rel=1e-5)
        assert row["prediction"] == int(logp.argmax())
        assert row["correct"] == (int(logp.argmax()) == LABELS[i])
        assert row["probability"] == pytest.approx(float(logp.exp().max()), rel=1e-5)
    assert res.column_shape("attention_entropy") == (2, 4)


def test_causal_lm_loss_lens_and_attribution_match_direct_calls(tmp_path):
    model = causal_lm()
    tok = minilm_tokenizer()
    res = _go(model, TEXTS, tmp_path / "r", tasks=("loss", "lens", "attribution"), top_k=3)
    df = res.records()
    for i, text in enumerate(TEXTS):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0].double()
        ids = enc["input_ids"][0]
        nll = -torch.log_softmax(logits[:-1], -1).gather(-1, ids[1:, None])[:, 0]
        row = df.iloc[i]
        assert row["loss"] == pytest.approx(float(nll.mean()), rel=1e-5)
        assert row["perplexity"] == pytest.approx(float(nll.mean().exp()), rel=1e-5)
        assert row["prediction"] == int(logits[-1].argmax())
        lens = llmdbg.logit_lens(model, enc, tokenizer=tok, top_k=1, progress=False)
        assert list(row["lens_top_ids"]) == lens.top_ids[:, 0, -1, 0].tolist()
        sal = llmdbg.saliency(model, enc, target="predicted", tokenizer=tok, progress=False)
        s = sal.scores[0]
        expect = np.argsort(-np.abs(s), kind="stable")[:3]
        assert list(row["attribution_positions"]) == expect.tolist()
        np.testing.assert_allclose(row["attribution_scores"], s[expect], rtol=1e-4, atol=1e-7)
        assert list(row["attribution_tokens"]) == [sal.tokens[0][j] for j in expect]


def test_activations_are_the_block_outputs_at_real_tokens(tmp_path):
    model = classifier()
    tok = minilm_tokenizer()
    res = _go(model, TEXTS, tmp_path / "r", tasks=("activations",), activation_modules=("blocks",))
    df = res.records()
    layout = llmdbg.find_layout(model)
    for name in layout.blocks:
        acts = res.activations(name)
        assert acts.dtype == torch.float32
        assert acts.shape[0] == int(df["activations_rows"].sum())
    # offsets are within each shard; shards follow each other
    shard_rows = df.groupby(df["example_id"] // 3)["activations_rows"].sum().cumsum().shift(fill_value=0)
    for i, text in enumerate(TEXTS):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        start = int(shard_rows[i // 3] + df["activations_offset"][i])
        n = int(df["activations_rows"][i])
        assert n == enc["input_ids"].shape[1]
        got = res.activations(layout.blocks[-1])[start : start + n]
        torch.testing.assert_close(got, hs[-1][0], rtol=1e-5, atol=1e-5)


def test_activation_positions_and_dtype(tmp_path):
    model = classifier()
    res = _go(
        model,
        TEXTS[:3],
        tmp_path / "r",
        tasks=("activations", "embedding"),
        activation_positions="mean",
        activation_dtype="bfloat16",
    )
    df = res.records()
    name = llmdbg.find_layout(model).blocks[-1]
    acts = res.activations(name)
    assert acts.dtype == torch.bfloat16 and acts.shape == (3, 32)
    assert df["activations_rows"].tolist() == [1, 1, 1]
    expect = torch.from_numpy(np.stack(df["embedding"].to_numpy())).to(torch.bfloat16)
    torch.testing.assert_close(acts, expect, rtol=1e-2, atol=1e-2)


def test_pooling_options(tmp_path):
    model = classifier()
    tok = minilm_tokenizer()
    for pooling, pick in (("cls", 0), ("last", -1)):
        df = _go(model, TEXTS[:4], tmp_path / pooling, tasks=("embedding",), pooling=pooling).records()
        for i, text in enumerate(TEXTS[:4]):
            with torch.no_grad():
                h = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0]
            np.testing.assert_allclose(df["embedding"][i], h[pick].numpy(), rtol=1e-5, atol=1e-6)


def test_nan_in_one_example_is_located_and_counted(tmp_path):
    model = classifier()
    block = model.bert.encoder.layer[1]
    tok = minilm_tokenizer()
    bad_id = tok.convert_tokens_to_ids("dog")

    def plant(module, args, output, ids_holder={}):  # noqa: B006
        out = output[0] if isinstance(output, tuple) else output
        rows = (ids_holder["ids"] == bad_id).any(1)
        out[rows] = float("nan")
        return output

    def keep_ids(module, args, kwargs):
        plant.__defaults__[0]["ids"] = kwargs["input_ids"]

    h1 = model.register_forward_pre_hook(keep_ids, with_kwargs=True)
    h2 = block.register_forward_hook(plant)
    try:
        df = _go(model, TEXTS, tmp_path / "r", tasks=("stats",)).records()
    finally:
        h1.remove()
        h2.remove()
    bad = df["example_id"] == 1  # "a dog"
    assert df.loc[bad, "first_nonfinite_layer"].tolist() == [2]
    assert (df.loc[~bad, "first_nonfinite_layer"] == -1).all()
    n_tok = int(df.loc[bad, "n_tokens"].iloc[0])
    assert df.loc[bad, "stats_nan"].iloc[0].tolist() == [0, 0, n_tok * 32]


# -- data forms and bad input -------------------------------------------------------------------------


def test_every_data_form_gives_the_same_records(tmp_path):
    import datasets

    model = classifier()
    frame = pd.DataFrame({"text": TEXTS, "label": LABELS})
    (tmp_path / "d.txt").write_text("\n".join(TEXTS) + "\n")
    with open(tmp_path / "d.jsonl", "w") as f:
        for t, lab in zip(TEXTS, LABELS):
            f.write(json.dumps({"text": t, "label": lab}) + "\n")
    frame.to_parquet(tmp_path / "d.parquet")
    forms = {
        "frame": frame,
        "records": frame.to_dict("records"),
        "jsonl": str(tmp_path / "d.jsonl"),
        "parquet": tmp_path / "d.parquet",
        "dataset": datasets.Dataset.from_pandas(frame),
    }
    ref = _go(model, frame, tmp_path / "ref", tasks=("stats", "loss")).records()
    for name, data in forms.items():
        got = _go(model, data, tmp_path / name, tasks=("stats", "loss")).records()
        pd.testing.assert_frame_equal(got, ref, obj=name)
    plain = _go(model, str(tmp_path / "d.txt"), tmp_path / "txt", tasks=("stats",)).records()
    ref_plain = _go(model, TEXTS, tmp_path / "list", tasks=("stats",)).records()
    pd.testing.assert_frame_equal(plain, ref_plain)
    assert "label" not in plain


def test_bad_examples_are_recorded_not_fatal(tmp_path):
    model = classifier()
    long = "word " * 200
    data = ["fine text", "", "   ", None, b"\xff\xfe", 7, long, "also fine"]
    df = _go(model, data, tmp_path / "r", tasks=("stats", "embedding"), max_length=16).records()
    assert df["status"].tolist() == ["ok", "skipped", "skipped", "skipped", "skipped", "skipped", "ok", "ok"]
    assert df["reason"].tolist()[1:6] == [
        "empty text",
        "empty text",
        "not text (NoneType)",
        "not UTF-8 text",
        "not text (int)",
    ]
    assert df["truncated"].tolist() == [False] * 6 + [True, False]
    assert df["n_tokens"][6] == 16 and df["reason"][6].startswith("truncated from 202 to 16")
    assert df["embedding"][1] is None and df["embedding"][0].shape == (32,)


def test_an_example_that_fails_is_recorded_with_its_error(tmp_path):
    model = classifier()
    bad_id = minilm_tokenizer().convert_tokens_to_ids("dog")

    def explode(module, args, kwargs):
        if (kwargs["input_ids"] == bad_id).any():
            raise RuntimeError("boom on dog")

    h = model.register_forward_pre_hook(explode, with_kwargs=True)
    try:
        df = _go(model, TEXTS, tmp_path / "r", tasks=("stats",)).records()
    finally:
        h.remove()
    assert df.loc[1, "status"] == "error" and "RuntimeError: boom on dog" in df.loc[1, "reason"]
    assert (df.drop(index=1)["status"] == "ok").all()
    # the other examples of the failed batch were rerun alone and match a clean run
    clean = _go(model, TEXTS, tmp_path / "clean", tasks=("stats",)).records()
    for i in (0, 2):
        np.testing.assert_allclose(df["stats_mean"][i], clean["stats_mean"][i], rtol=1e-5)


def test_clear_errors(tmp_path):
    model = classifier()
    tok = minilm_tokenizer()
    with pytest.raises(ValueError, match=r"no text column 'text'; its columns are \['body', 'y'\]"):
        run(model, tok, pd.DataFrame({"body": ["a"], "y": [1]}), out=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="unknown task"):
        run(model, tok, TEXTS, tasks=("stats", "telepathy"), out=tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="engine must be one of"):
        run(model, tok, TEXTS, out=tmp_path / "c", engine="spark", progress=False)
    with pytest.raises(ValueError, match="data is empty"):
        run(model, tok, [], out=tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="no usable text"):
        run(model, tok, ["", None], out=tmp_path / "e", progress=False)
    with pytest.raises(ValueError, match="pooling must be one of"):
        run(model, tok, TEXTS, tasks=("embedding",), pooling="max", out=tmp_path / "f", progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        run(model, tok, TEXTS, out=tmp_path / "g", batch_size=0, progress=False)
    encoder = tf.BertModel(classifier().config).eval()
    with pytest.raises(ValueError, match=r"task 'loss' needs a causal LM or a sequence classifier"):
        run(encoder, tok, TEXTS, tasks=("loss",), out=tmp_path / "h", progress=False)
    with pytest.raises(ValueError, match="neither a class index nor"):
        run(
            model,
            tok,
            pd.DataFrame({"text": TEXTS[:2], "label": ["x", "y"]}),
            tasks=("loss",),
            out=tmp_path / "i",
            progress=False,
        )


def test_ray_missing_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"pip install 'llmdbg\[ray\]'"):
        run(classifier(), minilm_tokenizer(), TEXTS, out=tmp_path / "r", engine="ray", progress=False)


def test_the_model_is_left_as_it_was(tmp_path):
    model = classifier()
    model.train()
    model.bert.encoder.layer[0].eval()
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    impl = model.config._attn_implementation
    _go(model, TEXTS, tmp_path / "r", tasks=("stats", "attention", "loss", "attribution"))
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert model.config._attn_implementation == impl
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


# -- the output directory -------------------------------------------------------------------------------


def test_output_is_parquet_readable_by_pandas_and_duckdb_and_never_a_pickle(tmp_path):
    import duckdb

    out = tmp_path / "r"
    _go(classifier(), TEXTS, out, tasks=("stats", "embedding", "activations"))
    df = pd.read_parquet(out)
    assert sorted(df["example_id"]) == list(range(len(TEXTS)))
    n = duckdb.sql(f"select count(*), count(distinct example_id) from '{out}/*.parquet'").fetchall()[0]
    assert n == (len(TEXTS), len(TEXTS))
    width = duckdb.sql(f"select len(embedding) from '{out}/*.parquet' limit 1").fetchall()[0][0]
    assert width == 32
    for root, _, files in os.walk(out):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                head = fh.read(8)
            assert not head.startswith(b"\x80"), f"{f} looks like a pickle"
            if f.endswith(".parquet"):
                assert head[:4] == b"PAR1"
            elif f.endswith(".json"):
                with open(os.path.join(root, f)) as fh:
                    json.load(fh)
            else:
                assert f.endswith(".safetensors"), f
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["version"] == 1 and len(manifest["shards"]) == 3


def test_another_jobs_directory_is_refused_unless_forced(tmp_path):
    out = tmp_path / "r"
    model = classifier()
    _go(model, TEXTS, out, tasks=("stats",))
    with pytest.raises(ValueError, match=r"holds another job's output \(it differs in \['tasks'"):
        _go(model, TEXTS, out, tasks=("embedding",))
    with pytest.raises(ValueError, match="differs in \\['model'\\]"):
        _go(classifier(seed=1), TEXTS, out, tasks=("stats",))  # another checkpoint, same config
    res = _go(model, TEXTS, out, tasks=("embedding",), force=True)
    assert "embedding" in res.records() and "stats_mean" not in res.records()
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no llmdbg run"):
        _go(model, TEXTS, foreign)
    _go(model, TEXTS, foreign, force=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_resume_skips_finished_shards_and_resume_false_recomputes(tmp_path):
    out = tmp_path / "r"
    model = classifier()
    first = _go(model, TEXTS, out, tasks=("stats",)).records()
    again = _go(model, TEXTS, out, tasks=("stats",))
    assert again.summary()["shards_computed"] == 0
    pd.testing.assert_frame_equal(again.records(), first)
    os.remove(out / "part-00001.parquet")
    partial = _go(model, TEXTS, out, tasks=("stats",))
    assert partial.summary()["shards_computed"] == 1
    pd.testing.assert_frame_equal(partial.records(), first)
    fresh = _go(model, TEXTS, out, tasks=("stats",), resume=False)
    assert fresh.summary()["shards_computed"] == 3


def test_a_shard_the_manifest_missed_is_taken_from_its_file(tmp_path):
    """A process killed between a shard's rename and the manifest update: the shard is complete,
    and a resume describes it from its own file instead of losing it."""
    out = tmp_path / "r"
    model = classifier()
    first = _go(model, TEXTS, out, tasks=("stats", "activations"))
    manifest = json.loads((out / "_manifest.json").read_text())
    entry = manifest["shards"].pop("1")
    (out / "_manifest.json").write_text(json.dumps(manifest))
    again = _go(model, TEXTS, out, tasks=("stats", "activations"))
    assert again.summary()["shards_computed"] == 0
    assert again.manifest["shards"]["1"] == entry
    assert again.summary()["rows"] == len(TEXTS)
    name = llmdbg.find_layout(model).blocks[0]
    assert torch.equal(again.activations(name), first.activations(name))


def test_the_same_data_by_another_path_is_the_same_job(tmp_path, monkeypatch):
    (tmp_path / "d.txt").write_text("\n".join(TEXTS))
    model = classifier()
    _go(model, str(tmp_path / "d.txt"), tmp_path / "r", tasks=("stats",))
    monkeypatch.chdir(tmp_path)
    again = _go(model, "d.txt", tmp_path / "r", tasks=("stats",))
    assert again.summary()["shards_computed"] == 0
    assert again.manifest["data_source"] == str(tmp_path / "d.txt")


def test_a_newer_manifest_is_refused(tmp_path):
    out = tmp_path / "r"
    _go(classifier(), TEXTS[:2], out, tasks=("stats",))
    m = json.loads((out / "_manifest.json").read_text())
    m["version"] = 99
    (out / "_manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="newer llmdbg .*version 99"):
        open_run(out)


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {here!r})
    import torch
    from test_runs import classifier, TEXTS, _go
    from tiny_models import minilm_tokenizer
    model = classifier()
    marker = minilm_tokenizer().convert_tokens_to_ids("whole")
    def kill(module, args, kwargs):
        if (kwargs["input_ids"] == marker).any():  # example 4, in the second shard
            os.kill(os.getpid(), signal.SIGKILL)
    model.register_forward_pre_hook(kill, with_kwargs=True)
    _go(model, TEXTS, {out!r}, tasks=("stats", "embedding"))
    """
)


def test_sigkill_after_the_first_shard_then_rerun_gives_one_row_per_example(tmp_path):
    out = tmp_path / "r"
    script = KILLED_RUN.format(here=HERE, out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert sorted(os.listdir(out)) == ["_manifest.json", "part-00000.parquet"]
    assert len(pd.read_parquet(out)) == 3  # the first shard, whole
    res = _go(classifier(), TEXTS, out, tasks=("stats", "embedding"))
    assert res.summary()["shards_computed"] == 2 and res.complete
    df = pd.read_parquet(out)
    assert sorted(df["example_id"]) == list(range(len(TEXTS)))  # exactly one row each
    clean = _go(classifier(), TEXTS, tmp_path / "clean", tasks=("stats", "embedding")).records()
    pd.testing.assert_frame_equal(res.records(), clean)


# -- the Ray engine -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")  # installed by `make test` (llmdbg[ray]); the check is the test's
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_engine_records_equal_the_local_engines(tmp_path, ray_cluster):
    model = causal_lm()
    data = [*TEXTS, "", None, "word " * 100]
    tasks = ("stats", "embedding", "attention", "loss", "lens", "activations")
    local = _go(model, data, tmp_path / "local", tasks=tasks, max_length=32)
    remote = _go(model, data, tmp_path / "ray", tasks=tasks, max_length=32, engine="ray", num_workers=2)
    pd.testing.assert_frame_equal(remote.records(), local.records())
    name = llmdbg.find_layout(model).blocks[-1]
    assert torch.equal(remote.activations(name), local.activations(name))
    assert remote.summary()["engine"] == "ray" and remote.complete


def test_ray_engine_resumes_a_local_run(tmp_path, ray_cluster):
    out = tmp_path / "r"
    model = causal_lm()
    local = _go(model, TEXTS, out, tasks=("stats",))
    os.remove(out / "part-00002.parquet")
    # The same job (the driver builds the model to fingerprint it), resumed on Ray.
    resumed = _go(model, TEXTS, out, tasks=("stats",), engine="ray", num_workers=1)
    assert resumed.summary()["shards_computed"] == 1
    pd.testing.assert_frame_equal(resumed.records(), local.records())


def test_ray_engine_with_a_model_factory(tmp_path, ray_cluster):
    vocab = _vocab()

    def factory():  # built inside each actor; nothing of the test module is needed there
        import torch
        import transformers

        torch.manual_seed(0)
        cfg = transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, vocab_size=vocab, n_positions=64, bos_token_id=1, eos_token_id=2
        )
        return transformers.GPT2LMHeadModel(cfg).eval()

    remote = _go(factory, TEXTS, tmp_path / "ray", tasks=("stats", "loss"), engine="ray", num_workers=2)
    local = _go(causal_lm(), TEXTS, tmp_path / "local", tasks=("stats", "loss"))
    pd.testing.assert_frame_equal(remote.records(), local.records())
    # The job's identity is read where the model is built: the same weights, the same job.
    assert remote.manifest["job"] == local.manifest["job"]
    os.remove(tmp_path / "local" / "part-00001.parquet")
    resumed = _go(factory, TEXTS, tmp_path / "local", tasks=("stats", "loss"), engine="ray", num_workers=1)
    assert resumed.summary()["shards_computed"] == 1
    pd.testing.assert_frame_equal(resumed.records(), remote.records())

    def other_checkpoint():
        model = factory()
        with torch.no_grad():
            model.lm_head.weight.mul_(1.01)
        return model

    with pytest.raises(ValueError, match=r"differs in \['model'\]"):
        _go(other_checkpoint, TEXTS, tmp_path / "local", tasks=("stats", "loss"), engine="ray", num_workers=1)


@pytest.mark.parametrize("task", ["stats", "embedding", "attention", "loss", "attribution", "lens", "activations"])
def test_each_task_runs_alone_and_gives_its_columns(tmp_path, task):
    expect = {
        "stats": "stats_mean",
        "embedding": "embedding",
        "attention": "attention_entropy",
        "loss": "loss",
        "attribution": "attribution_tokens",
        "lens": "lens_top_ids",
        "activations": "activations_rows",
    }
    df = _go(causal_lm(), TEXTS[:2], tmp_path / "r", tasks=(task,)).records()
    assert (df["status"] == "ok").all()
    others = {c for t, c in expect.items() if t != task}
    assert expect[task] in df and not others & set(df.columns)


def test_encoder_decoders_are_refused_by_name(tmp_path):
    torch.manual_seed(0)
    cfg = CONFIGS["t5"]()
    cfg.vocab_size = _vocab()
    model = tf.T5ForConditionalGeneration(cfg).eval()
    with pytest.raises(ValueError, match=r"does not support encoder-decoder models \(T5ForConditionalGeneration\)"):
        _go(model, TEXTS, tmp_path / "r", tasks=("stats",))


def test_a_model_that_pools_the_sequence_is_refused_not_misread(tmp_path):
    """Funnel halves the sequence between its blocks: its hidden states are not one vector per
    input token, so reading them with the input's mask would be silently wrong."""
    torch.manual_seed(0)
    cfg = tf.FunnelConfig(
        vocab_size=_vocab(), block_sizes=[1, 1], d_model=32, n_head=4, d_head=8, d_inner=64, num_decoder_layers=1
    )
    model = tf.FunnelForSequenceClassification(cfg).eval()
    with pytest.raises(ValueError, match=r"not \(B, T, D\)|Funnel|funnel"):
        _go(model, TEXTS, tmp_path / "r", tasks=("stats",))


def test_hidden_states_not_over_the_input_tokens_are_refused():
    """The runs' own guard, for a family the support registry does not know."""
    from llmdbg.runs.tasks import _pool, _stats

    mask = torch.ones(2, 6, dtype=torch.bool)
    pooled = np.zeros((2, 3, 4), np.float32)  # a sequence halved twice
    with pytest.raises(ValueError, match=r"hidden state 1 has shape \(2, 3, 4\), not \(B, T, D\) = \(2, 6, D\)"):
        _stats([np.zeros((2, 6, 4), np.float32), pooled], mask)
    with pytest.raises(ValueError, match=r"the pooled hidden state has shape \(2, 3, 4\)"):
        _pool(pooled, mask, "mean")
