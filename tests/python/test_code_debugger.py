"""The code-debugger worked example (examples/code_debugger.py): its templates, split, sandbox,
localisation and metrics, and one tiny end-to-end pass through the Trainer callback."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))

import code_debugger as cd

# the shared test helpers
from tiny_models import one_thread  # noqa: F401 (fixture: tiny models run on one thread)


def _passes(code: str, tests: tuple[str, ...]) -> bool:
    """In-process reference: exec the code, then every assert (the templates loop over ranges
    only, so nothing here can hang)."""
    ns: dict = {}
    try:
        exec(code, ns)
        for t in tests:
            exec(t, ns)
    except Exception:
        return False
    return True


# ------------------------------------------------------------------------------------ templates


@pytest.mark.parametrize("template", cd.TEMPLATES, ids=lambda t: t.name)
def test_fixed_code_passes_and_every_bug_fails(template):
    assert sorted(b.kind for b in template.bugs) == sorted(cd.BUG_KINDS)
    namings = template.namings()
    for naming in (namings[0], namings[len(namings) // 2], namings[-1]):
        for bug in template.bugs:
            pair = cd._inject(template, naming, bug)
            assert pair.kind == bug.kind and pair.template == template.name
            assert _passes(pair.fixed, pair.tests), pair.fixed
            assert not _passes(pair.buggy, pair.tests), f"{bug.kind} bug not caught by the tests:\n{pair.buggy}"
            old, new = pair.fixed.split("\n"), pair.buggy.split("\n")
            assert len(old) == len(new)
            assert [k + 1 for k, (a, b) in enumerate(zip(old, new)) if a != b] == [pair.line]


def test_pairs_are_deterministic_and_the_test_split_holds_out_combinations():
    train, test = cd.make_pairs(3)
    assert cd.make_pairs(3) == (train, test)
    assert cd.make_pairs(4) != (train, test)
    seen = {(p.template, p.naming) for p in train}
    assert all((p.template, p.naming) not in seen for p in test)
    # ... while every template, bug kind and name of the test split was seen in training
    assert {(p.template, p.kind) for p in test} <= {(p.template, p.kind) for p in train}
    assert {n for p in test for n in p.naming} <= {n for p in train for n in p.naming}
    per_template = {t.name: sum(p.template == t.name for p in train + test) for t in cd.TEMPLATES}
    assert max(per_template.values()) <= 80 * 3
    with pytest.raises(ValueError, match="test_fraction"):
        cd.make_pairs(0, test_fraction=1.0)
    with pytest.raises(ValueError, match="split"):
        cd.make_pairs(0, split="template")


def test_the_bug_split_holds_out_one_bug_kind_per_template():
    train, test = cd.make_pairs(0, split="bug")
    held = {(p.template, p.kind) for p in test}
    assert held.isdisjoint({(p.template, p.kind) for p in train})
    # one kind per template, each kind held out somewhere and still trained on elsewhere
    assert sorted(t for t, _ in held) == sorted(t.name for t in cd.TEMPLATES)
    assert {k for _, k in held} == set(cd.BUG_KINDS) == {p.kind for p in train}


def test_prompt_format():
    pair = cd.make_pairs(0)[1][0]
    assert pair.prompt == "BUGGY:\n" + pair.buggy + "\nFIXED:\n"


def test_tokenizer_round_trips_every_pair():
    train, test = cd.make_pairs(0)
    tok = cd.build_tokenizer([p.prompt + p.fixed for p in train])
    for p in test:
        text = p.prompt + p.fixed
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    # "<" and "<=" are single tokens, so an operator bug is one substitution
    assert len(tok(" <=", add_special_tokens=False)["input_ids"]) == 1
    assert tok(" frobnicate", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    with pytest.raises(TypeError, match="texts"):
        cd.build_tokenizer("def f(): pass")


# -------------------------------------------------------------------------------------- sandbox

SUM = "def f(xs):\n    return sum(xs)"


def test_sandbox_pass_and_fail():
    ok = cd.run_tests_sandboxed(SUM, ["assert f([1, 2]) == 3"])
    assert ok.passed and ok.status == "pass" and ok.reason == ""
    bad = cd.run_tests_sandboxed(SUM, ["assert f([1, 2]) == 3", "assert f([1]) == 2"])
    assert bad.status == "fail" and "assert f([1]) == 2" in bad.reason
    broken = cd.run_tests_sandboxed("def f(:\n", ["assert f() == 1"])
    assert broken.status == "fail" and "SyntaxError" in broken.reason
    raising = cd.run_tests_sandboxed(SUM, ["assert f(None) == 0"])
    assert raising.status == "fail" and "TypeError" in raising.reason


def test_sandbox_blocks_the_network():
    # a server the child could reach if the network were open
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        for code in (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
            f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))",
            f"import _socket\n_socket.socket().connect(('127.0.0.1', {port}))",
            "import socket\nsocket.getaddrinfo('localhost', 80)",
        ):
            r = cd.run_tests_sandboxed(code, [])
            assert r.status == "fail", code
            assert "PermissionError: network access is disabled" in r.reason, r.reason
    # inside a test too
    r = cd.run_tests_sandboxed("import socket\ndef f():\n    return socket.socket()", ["assert f()"])
    assert r.status == "fail" and "network access is disabled" in r.reason


def test_sandbox_times_out_an_infinite_loop():
    r = cd.run_tests_sandboxed("def f():\n    while True:\n        pass", ["assert f()"], timeout=0.5)
    assert r.status == "timeout" and not r.passed and "0.5 s" in r.reason
    assert r.seconds < 5


def test_sandbox_environment_is_empty_and_a_dying_child_is_an_error(monkeypatch):
    monkeypatch.setenv("CODE_DEBUGGER_SECRET", "x")
    r = cd.run_tests_sandboxed(
        "import os", ["assert 'CODE_DEBUGGER_SECRET' not in os.environ", "assert 'HOME' not in os.environ"]
    )
    assert r.passed, r.reason
    died = cd.run_tests_sandboxed("import os\nos._exit(3)", [])
    assert died.status == "error" and "exit status 3" in died.reason
    # the candidate's own output cannot forge a result
    for forge in ('print(\'{"status": "pass", "reason": ""}\')', 'import os\nos.write(1, b\'{"status": "pass"}\')'):
        forged = cd.run_tests_sandboxed(forge, ["assert False"])
        assert forged.status == "fail", forge


def test_sandbox_bad_input():
    with pytest.raises(ValueError, match="timeout"):
        cd.run_tests_sandboxed(SUM, [], timeout=0)
    with pytest.raises(TypeError, match="tests"):
        cd.run_tests_sandboxed(SUM, "assert f([]) == 0")
    with pytest.raises(TypeError, match="code"):
        cd.run_tests_sandboxed(b"x = 1", [])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- localisation, metrics


def test_localise_hand_made():
    buggy = "def f(xs):\n    t = 0\n    for x in xs:\n        t = t - x\n    return t"
    assert cd.localise(buggy, buggy.replace("t - x", "t + x")) == 4
    assert cd.localise(buggy, buggy) is None
    assert cd.localise(buggy, buggy + "\n") is None  # a trailing newline is no change
    assert cd.localise(buggy, buggy.replace("xs):", "ys):").replace("in xs", "in ys")) == 1  # the first change wins
    assert cd.localise(buggy, "def f(xs):\n    t = 0") == 3  # lines missing from the output
    assert cd.localise(buggy, buggy + "\n    print(t)") == 6  # a line added at the end
    assert cd.localise(buggy, "") == 1


def test_exact_match():
    fixed = "def f():\n    return 1"
    assert cd.exact_match(fixed, fixed)
    assert cd.exact_match(fixed + "\n", fixed)
    assert not cd.exact_match(fixed.replace("    ", "  "), fixed)
    assert not cd.exact_match("", fixed)


def test_evaluate_scores_outputs_and_feeds_the_error_analysis(monkeypatch):
    test = cd.make_pairs(0)[1][:4]
    p0, p1, p2, p3 = test
    other_line = 1 if p2.line != 1 else 2
    lines = p2.buggy.split("\n")
    lines[other_line - 1] += "  # changed"
    wrong_fix = p3.fixed.split("\n")
    wrong_fix[p3.line - 1] = p3.buggy.split("\n")[p3.line - 1] + " "
    outputs = [p0.fixed, p1.buggy, "\n".join(lines), "\n".join(wrong_fix)]
    monkeypatch.setattr(cd, "generate", lambda model, tok, prompts, **kw: outputs[: len(prompts)])
    tok = cd.build_tokenizer([p.prompt + p.fixed for p in test])
    result = cd.evaluate(None, tok, test)
    f = result.frame
    assert list(f["exact"]) == [True, False, False, False]
    assert list(f["tests_passed"]) == [True, False, False, False]
    assert [None if x is pd.NA else x for x in f["predicted_line"]] == [p0.line, None, other_line, p3.line]
    assert list(f["localised"]) == [True, False, False, True]
    assert list(f["outcome"]) == [p0.kind, "unchanged", "wrong line", "wrong fix"]
    assert result.summary == {
        "n": 4,
        "exact_match": 0.25,
        "tests_passed": 0.25,
        "repair_accuracy": 0.25,
        "localisation_accuracy": 0.5,
    }
    assert result.by("kind")["n"].sum() == 4
    analysis = cd.analyse_errors(result)
    assert len(analysis.errors) == 3
    assert analysis.by_pair["errors"].sum() == 3
    assert set(analysis.by_pair["pred"]) == {"unchanged", "wrong line", "wrong fix"}


# ---------------------------------------------------------------------------------- end to end


def test_tiny_run_through_the_trainer_callback_and_an_attribution(tmp_path):
    train, test = cd.make_pairs(0)
    tok = cd.build_tokenizer([p.prompt + p.fixed for p in train])
    model = cd.build_model(tok, n_embd=16, n_layer=2, n_head=2)
    run = cd.train(model, tok, train[:16], steps=3, batch_size=4, log_dir=str(tmp_path / "tb"), every=2)
    assert run.watch.closed and len(run.watch.history) == 3
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    assert run.final_loss == pytest.approx(run.trainer.state.log_history[-2]["loss"])
    pair = test[0]
    attribution, top = cd.attribute_fix(model, tok, pair, method="saliency")
    prompt = tok(pair.prompt, add_special_tokens=False)["input_ids"]
    fixed = tok(pair.fixed, add_special_tokens=False)["input_ids"]
    buggy = tok(pair.buggy, add_special_tokens=False)["input_ids"]
    k = next(j for j, (a, b) in enumerate(zip(fixed, buggy)) if a != b)
    # the target is the fix's first changed token, in the context of the prompt and the fix so far
    assert attribution.target_ids.tolist() == [fixed[k]]
    assert attribution.source_ids.tolist() == prompt + fixed[:k]
    assert attribution.scores.shape == (1, len(prompt) + k)
    assert sorted(top["position"]) == list(range(len(prompt) + k))
    assert torch.isfinite(torch.from_numpy(attribution.scores)).all()
