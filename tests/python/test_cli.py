"""``llmdbg report``: end to end on saved tiny models and on MiniLM, and every bad input a user can
give (unknown model, empty text, too long a text, an existing output directory, a target that does
not fit the model) answered with one readable line and exit code 2."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import transformers as tf

from llmdbg import cli
from saved_models import KINDS, MAX_POS, minilm_path, save_tiny


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def minilm():
    return minilm_path()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return {kind: save_tiny(kind, tmp_path_factory.mktemp(kind)) for kind in KINDS}


def _report(tmp_path, model, *args):
    out = tmp_path / "report"
    code, stdout, stderr = _run(["report", "--model", str(model), "--out", str(out), "--no-progress", *args])
    return out, code, stdout, stderr


def _summary(out):
    return json.loads((out / "summary.json").read_text("utf-8"))


# -- help --------------------------------------------------------------------------------


def test_report_help_is_complete():
    code, out, _ = _run(["report", "--help"])
    assert code == 0
    for option in (
        "--model",
        "--text",
        "--file",
        "--target",
        "--out",
        "--force",
        "--max-length",
        "--no-progress",
        "examples:",
        "causal LM",
        "sequence classifier",
        "masked LM",
    ):
        assert option in out, option
    code, out, _ = _run(["--help"])
    assert code == 0 and "report" in out and "demo" in out
    code, _, err = _run(["report", "--text", "x"])
    assert code == 2 and "--model" in err


# -- end to end ----------------------------------------------------------------------------


def test_report_on_minilm(tmp_path, minilm):
    texts = tmp_path / "texts.txt"
    texts.write_text("Paris is the capital of France.\n\nThe cat sat on the mat.\n", encoding="utf-8")
    out, code, stdout, stderr = _report(tmp_path, minilm, "--text", "A third sentence.", "--file", str(texts))
    assert code == 0, stderr
    assert stdout.strip() == f"Report written to {(out / 'index.html').resolve()}"
    summary = _summary(out)
    assert summary["texts"] == ["A third sentence.", "Paris is the capital of France.", "The cat sat on the mat."]
    assert summary["kind"] == "encoder" and summary["class"] == "BertModel"
    assert "errors" not in summary and "Attribution" in summary["sections"]
    for title in ("Model", "Inputs", "Outputs", "Activation statistics", "Attention", "Attention analysis"):
        assert title in summary["sections"]
    page = (out / "index.html").read_text("utf-8")
    assert page.count('<img src="data:image/png;base64,') >= 5
    with np.load(out / "arrays.npz") as arrays:
        cos = arrays["cosine_similarity"]
        emb = arrays["sentence_embeddings"]
        assert arrays["rollout"].shape[0] == 3 and arrays["flow"].shape[:2] == (3, 1)
    # The cosine table is an independent computation from the pooled embeddings.
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(cos, unit @ unit.T, atol=1e-5)
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-5)


def test_report_on_a_classifier_with_a_label_target(tmp_path, saved):
    out, code, _, stderr = _report(
        tmp_path, saved["classifier"], "--text", "good", "--text", "bad movie", "--target", "positive"
    )
    assert code == 0, stderr
    summary = _summary(out)
    assert summary["kind"] == "classifier" and summary["target"] == 2
    assert "errors" not in summary and summary["attribution"]["target"] == [2, 2]
    with np.load(out / "arrays.npz") as arrays:
        logits = arrays["logits"]
    assert logits.shape == (2, 3)
    assert summary["predictions"] == logits.argmax(axis=1).tolist()
    assert "p(positive)" in (out / "index.html").read_text("utf-8")


def test_report_on_a_causal_lm_with_a_continuation(tmp_path, saved):
    out, code, _, stderr = _report(tmp_path, saved["causal"], "--text", "the capital of france is", "--target", "paris")
    assert code == 0, stderr
    summary = _summary(out)
    assert summary["kind"] == "causal-lm" and summary["target"] == "paris"
    assert "errors" not in summary
    with np.load(out / "arrays.npz") as arrays:  # one attribution row per continuation token
        n_out = len(summary["attribution"]["target_tokens"][0])
        assert arrays["attribution_scores"].shape == (1, n_out, arrays["input_ids"].shape[1])
    # Causal models: rollout and flow are read at the last real token, not at position 0.
    assert summary["flow_row"] == summary["n_tokens"][0] - 1
    with np.load(out / "arrays.npz") as arrays:
        assert arrays["top_token_ids"].shape == (1, 5)
        np.testing.assert_array_less(-1e-6, np.diff(-arrays["top_token_probs"][0]))  # sorted


# -- bad input -------------------------------------------------------------------------------


def test_unknown_model_name_offline_says_how_to_use_a_local_path(tmp_path):
    out, code, stdout, stderr = _report(tmp_path, "no-such-org/no-such-model-llmdbg", "--text", "hi")
    assert code == 2 and stdout == ""
    assert "offline" in stderr and "local directory" in stderr and "save_pretrained" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_model_directory(tmp_path):
    _, code, _, stderr = _report(tmp_path, tmp_path / "nothing-here", "--text", "hi")
    assert code == 2 and "does not exist" in stderr and "Traceback" not in stderr


def test_directory_without_a_model(tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    _, code, _, stderr = _report(tmp_path, empty, "--text", "hi")
    assert code == 2 and "save_pretrained" in stderr and "Traceback" not in stderr


def test_pickled_checkpoint_with_objects_is_refused_in_one_line(tmp_path, saved):
    """A pytorch_model.bin holding a non-tensor object: torch.load(weights_only=True) refuses it
    (right), but the report used to end in a traceback that suggested weights_only=False."""
    import os
    import shutil

    import torch

    model_dir = tmp_path / "pickled"
    shutil.copytree(saved["encoder"], model_dir)
    state = tf.AutoModel.from_pretrained(model_dir).state_dict()
    (model_dir / "model.safetensors").unlink()
    # A global the weights-only unpickler blocks; unpickling it would run code.
    torch.save({**state, "payload": os.getcwd}, model_dir / "pytorch_model.bin")
    out, code, stdout, stderr = _report(tmp_path, model_dir, "--text", "hi")
    assert code == 2 and stdout == "" and not out.exists()
    assert "pickle" in stderr and "never unpickles" in stderr and "weights_only=False" not in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--text", "   "], "non-empty"),
        (["--text", "ok", "--text", ""], "--text number 2 is empty"),
        ([], "no input text"),
    ],
)
def test_empty_text_is_refused_before_anything_runs(tmp_path, saved, args, message):
    out, code, _, stderr = _report(tmp_path, saved["encoder"], *args)
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_bad_text_file(tmp_path, saved):
    _, code, _, stderr = _report(tmp_path, saved["encoder"], "--file", str(tmp_path / "missing.txt"))
    assert code == 2 and "no such file" in stderr
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    _, code, _, stderr = _report(tmp_path, saved["encoder"], "--file", str(blank))
    assert code == 2 and "holds no text" in stderr


def test_long_text_is_truncated_with_a_warning(tmp_path, saved):
    long_text = " ".join(["word"] * 100)
    out, code, _, stderr = _report(tmp_path, saved["encoder"], "--text", "short", "--text", long_text)
    assert code == 0, stderr
    assert f"text 2 has 102 tokens but the model's maximum length is {MAX_POS}" in stderr
    assert "truncated" in stderr and "text 1" not in stderr
    summary = _summary(out)
    assert summary["n_tokens"] == [3, MAX_POS]
    with np.load(out / "arrays.npz") as arrays:
        assert arrays["input_ids"].shape == (2, MAX_POS)


def test_max_length_option(tmp_path, saved):
    out, code, _, stderr = _report(
        tmp_path, saved["encoder"], "--text", "one two three four five six", "--max-length", "5"
    )
    assert code == 0, stderr
    assert "--max-length 5 is 5" in stderr and "truncated to its first 5 tokens" in stderr
    assert _summary(out)["n_tokens"] == [5]
    _, code, _, stderr = _report(tmp_path, saved["encoder"], "--text", "x", "--max-length", "1", "--force")
    assert code == 2 and "--max-length must be at least 2" in stderr


def test_existing_output_directory_needs_force(tmp_path, saved):
    out = tmp_path / "report"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    _, code, stdout, stderr = _report(tmp_path, saved["encoder"], "--text", "hello")
    assert code == 2 and stdout == "" and "--force" in stderr and str(out) in stderr
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    _, code, _, stderr = _report(tmp_path, saved["encoder"], "--text", "hello", "--force")
    assert code == 0, stderr
    assert (out / "mine.txt").read_text() == "keep"
    assert {"index.html", "arrays.npz", "summary.json"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize(
    "model, target, message",
    [
        ("encoder", "positive", "encoder without a task head"),
        ("classifier", "7", "it has 3 classes, 0..2"),
        ("classifier", "happy", "one of the labels ['negative', 'neutral', 'positive']"),
        ("masked", "two words", "give the one token that should fill the mask"),
    ],
)
def test_target_that_does_not_fit_the_model(tmp_path, saved, model, target, message):
    out, code, stdout, stderr = _report(tmp_path, saved[model], "--text", "a [MASK] text", "--target", target)
    assert code == 2 and stdout == ""
    assert message in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_classifier_target_by_index_and_masked_lm_target(tmp_path, saved):
    out, code, _, stderr = _report(tmp_path, saved["classifier"], "--text", "fine", "--target", "0")
    assert code == 0, stderr
    assert _summary(out)["target"] == 0
    out, code, _, stderr = _report(
        tmp_path, saved["masked"], "--text", "paris is the [MASK] of france", "--target", "capital", "--force"
    )
    assert code == 0, stderr
    summary = _summary(out)
    tok = tf.AutoTokenizer.from_pretrained(saved["masked"])
    assert summary["kind"] == "masked-lm" and summary["target"] == tok.convert_tokens_to_ids("capital")
    assert "errors" not in summary and "Attribution" in summary["sections"]


# -- optional sections ---------------------------------------------------------------------


def test_attributions_and_embedding_map_with_eight_texts(tmp_path, saved):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"sentence number {i} is here" for i in range(8)), encoding="utf-8")
    out, code, _, stderr = _report(tmp_path, saved["classifier"], "--file", str(texts))
    assert code == 0, stderr
    summary = _summary(out)
    assert "errors" not in summary and "skipped" not in summary
    assert {"Attribution", "Embedding map"} <= set(summary["sections"])
    with np.load(out / "arrays.npz") as arrays:
        scores, ids, coords = arrays["attribution_scores"], arrays["input_ids"], arrays["embedding_map"]
        logits = arrays["logits"]
    assert scores.shape == ids.shape and coords.shape == (8, 2) and np.isfinite(coords).all()
    # The predicted class is what is explained, example by example.
    assert summary["attribution"]["target"] == logits.argmax(axis=1).tolist()
    assert all(summary["attribution"]["converged"])


def test_a_failing_section_does_not_lose_the_report(tmp_path, saved):
    import warnings

    from llmdbg.report import SectionFailedWarning, load_model, run_report

    def broken_section(ctx):
        raise RuntimeError("boom in a section")

    model, tok = load_model(str(saved["encoder"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = run_report(
            model, tok, ["one text", "two texts"], tmp_path / "r", progress=False, extra_sections=[broken_section]
        )
    assert [w.category for w in caught if issubclass(w.category, SectionFailedWarning)] == [SectionFailedWarning]
    summary = _summary(path.parent)
    assert summary["errors"] == {"Broken section": "RuntimeError: boom in a section"}
    assert "Broken section (failed)" in summary["sections"]
    assert "boom in a section" in path.read_text("utf-8")
