"""llmdbg.checks (perturbation and counterfactual tests) and llmdbg.suggest_edits."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import transformers as tf

from llmdbg import checks, suggest_edits
from tiny_models import minilm_tokenizer

TEXTS = [
    "The doctor said he would call, and the nurse agreed.",
    "She paid the bill; he left a tip.",
    "A quiet film with a great cast",
]


@pytest.fixture(scope="module")
def tokenizer():
    return minilm_tokenizer()


@pytest.fixture(scope="module")
def classifier(tokenizer):
    torch.manual_seed(0)
    cfg = tf.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        num_labels=3,
    )
    return tf.BertForSequenceClassification(cfg).eval()


def test_perturbations_are_deterministic_and_local():
    text = TEXTS[0]
    for name in checks.PERTURBATIONS:
        a = [checks.perturb(text, name, seed=3, variant=v) for v in range(5)]
        assert a == [checks.perturb(text, name, seed=3, variant=v) for v in range(5)]
        assert all(x is not None and x != text for x in a)
    words = text.split()
    for v in range(20):
        typo = checks.perturb(text, "typo", seed=v).split()
        assert len(typo) == len(words) and sum(x != y for x, y in zip(typo, words)) == 1
        dropped = checks.perturb(text, "drop_word", seed=v).split()
        assert len(dropped) == len(words) - 1
        swapped = checks.perturb(text, "swap_case", seed=v).split()
        diff = [(x, y) for x, y in zip(swapped, words) if x != y]
        assert len(diff) == 1 and diff[0][0] == diff[0][1].swapcase()
        shuffled = checks.perturb(text, "shuffle_clause", seed=v)
        assert shuffled != text and sorted(shuffled.replace(",", " ").replace(".", " ").split()) == sorted(
            text.replace(",", " ").replace(".", " ").split()
        )
    assert checks.perturb("single", "shuffle_clause") is None
    assert checks.perturb("one", "drop_word") is None
    with pytest.raises(ValueError, match="unknown perturbation"):
        checks.perturb(text, "paraphrase")


def test_perturbation_test_against_direct_scores(classifier, tokenizer):
    rep = checks.perturbation_test(classifier, tokenizer, TEXTS, n=2, seed=1)
    rep2 = checks.perturbation_test(classifier, tokenizer, TEXTS, n=2, seed=1)
    assert rep.rows.equals(rep2.rows)
    assert rep.kind == "classifier"
    with torch.no_grad():

        def probs(t):
            return torch.softmax(classifier(**tokenizer(t, return_tensors="pt")).logits.double(), -1)[0].numpy()

        for _, row in rep.rows.sample(5, random_state=0).iterrows():
            a, b = probs(row["original"]), probs(row["perturbed"])
            assert row["delta"] == pytest.approx(0.5 * np.abs(a - b).sum(), rel=1e-5, abs=1e-7)  # padding noise
            assert row["changed"] == float(a.argmax() != b.argmax())
    s = rep.summary
    assert list(s.index) == list(checks.PERTURBATIONS)
    assert s.loc["typo", "n"] == 6 and s.loc["shuffle_clause", "n"] == 4  # the third text has no clause
    assert s.loc["typo", "mean_delta"] == pytest.approx(rep.rows[rep.rows.perturbation == "typo"]["delta"].mean())
    assert len(rep.plot().axes) == 1


def test_counterfactual_swaps(classifier, tokenizer):
    rep = checks.counterfactual_test(classifier, tokenizer, TEXTS, swaps={"he": "she"}, target=1)
    rows = rep.rows
    assert set(rows["term"]) == {"he", "she"}
    r0 = rows[(rows["index"] == 0)].iloc[0]
    assert r0["counterfactual"] == "The doctor said she would call, and the nurse agreed."
    r1 = rows[(rows["index"] == 1) & (rows["term"] == "she")].iloc[0]
    assert r1["counterfactual"] == "He paid the bill; he left a tip."  # case kept, only 'she' swapped
    with torch.no_grad():
        p = torch.softmax(classifier(**tokenizer(r0["counterfactual"], return_tensors="pt")).logits.double(), -1)
    assert r0["counterfactual_score"] == pytest.approx(float(p[0, 1]), rel=1e-6)
    assert rep.summary.loc["he", "n"] == 2
    assert rep.summary.loc["he", "mean_diff"] == pytest.approx(rows[rows.term == "he"]["diff"].mean())
    assert len(rep.plot().axes) == 1
    with pytest.raises(ValueError, match="empty"):
        checks.counterfactual_test(classifier, tokenizer, [], swaps={"he": "she"})
    with pytest.raises(ValueError, match="swaps is empty"):
        checks.counterfactual_test(classifier, tokenizer, TEXTS, swaps={})
    with pytest.raises(ValueError, match="out of range"):
        checks.counterfactual_test(classifier, tokenizer, TEXTS, swaps={"he": "she"}, target=7)


def test_suggest_edits_first_order_and_verified(classifier, tokenizer):
    text = "a quiet film with a great cast"
    classifier.train()
    hooks_before = sum(len(m._forward_hooks) for m in classifier.modules())
    table = suggest_edits(classifier, tokenizer, text, target=2, k=4, candidates=3)
    assert classifier.training and all(p.requires_grad for p in classifier.parameters())
    assert sum(len(m._forward_hooks) for m in classifier.modules()) == hooks_before
    classifier.eval()
    enc = tokenizer(text, return_tensors="pt")
    ids = enc["input_ids"]
    # Independent first-order reference through inputs_embeds.
    e = classifier.get_input_embeddings()(ids).detach().requires_grad_(True)
    base = torch.log_softmax(classifier(inputs_embeds=e, attention_mask=enc["attention_mask"]).logits.double(), -1)[
        0, 2
    ]
    (g,) = torch.autograd.grad(base, e)
    w = classifier.get_input_embeddings().weight.detach().double()
    base = base.detach()
    assert table.attrs["base_score"] == pytest.approx(float(base), rel=1e-6)
    assert len(table) == 4 and (np.diff(table["delta"]) <= 0).all()
    for _, row in table.iterrows():
        i, v = int(row["position"]), int(row["replacement_id"])
        pred = float((w[v] - w[ids[0, i]]) @ g[0, i].double())
        assert row["predicted_delta"] == pytest.approx(pred, rel=1e-4, abs=1e-9)
        new = ids.clone()
        new[0, i] = v
        with torch.no_grad():
            score = torch.log_softmax(
                classifier(input_ids=new, attention_mask=enc["attention_mask"]).logits.double(), -1
            )[0, 2]
        assert row["delta"] == pytest.approx(float(score - base), abs=1e-6)  # batched float32 run
        assert 0 < i < ids.shape[1] - 1  # never [CLS] / [SEP]
    # The best first-order candidates were the ones verified.
    all_first = g[0].double() @ w.T - (g[0].double() * w[ids[0]]).sum(-1, keepdim=True)
    assert table["predicted_delta"].max() <= float(all_first.max()) + 1e-9


def test_suggest_edits_bad_input(classifier, tokenizer):
    with pytest.raises(ValueError, match="out of range"):
        suggest_edits(classifier, tokenizer, "a film", target=5)
    with pytest.raises(ValueError, match="non-empty"):
        suggest_edits(classifier, tokenizer, " ", target=0)
    with pytest.raises(ValueError, match="positive"):
        suggest_edits(classifier, tokenizer, "a film", target=0, k=0)
    base = tf.BertModel(classifier.config).eval()
    with pytest.raises(ValueError, match="no logits"):
        suggest_edits(base, tokenizer, "a film", target=0)


def test_embedding_kind_and_seed_changes_variants(tokenizer):
    torch.manual_seed(0)
    model = tf.BertModel(
        tf.BertConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=len(tokenizer)
        )
    ).eval()
    rep = checks.perturbation_test(model, tokenizer, TEXTS[:2], perturbations=("typo",), n=2)
    assert rep.kind == "embedding" and rep.rows["changed"].isna().all() and (rep.rows["delta"] >= -1e-12).all()
    a = checks.perturb(TEXTS[0], "typo", seed=0)
    assert any(checks.perturb(TEXTS[0], "typo", seed=s) != a for s in range(1, 6))
    random.seed(0)  # global state is not used
    assert checks.perturb(TEXTS[0], "typo", seed=0) == a
