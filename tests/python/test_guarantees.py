"""The promises of docs/guarantees.md that no other test file states in one place: a real Ctrl-C
(SIGINT delivered to the process in the middle of the model's forward) leaves the user's model
exactly as it was, for every call that runs a model.

The other promises (restored state under exceptions, thread safety, interrupt latency of the C++
kernels, dtypes, determinism, no pickles) are checked next to the features; the guarantees page
names each test.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
import transformers as tf

import llmdbg
from tiny_models import HEADS, IDS, LAYERS, VOCAB, H, one_thread  # noqa: F401

IDS_BATCH = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])


def _llama():
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        hidden_size=H,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        intermediate_size=2 * H,
        vocab_size=VOCAB,
        **IDS,
    )
    return tf.LlamaForCausalLM(cfg).eval()


def _metric(out):
    return out.logits[:, -1, 0]


# Every public call that runs the model, with arguments that make it run at least one forward.
CALLS = {
    "capture": lambda m: _capture(m, attentions=False),
    "capture(attentions=True)": lambda m: _capture(m, attentions=True),
    "capture(attentions='stats')": lambda m: _capture(m, attentions="stats"),
    "capture(generate)": lambda m: _capture_generate(m),
    "integrated_gradients": lambda m: llmdbg.integrated_gradients(m, IDS_BATCH, target=3, n_steps=4, progress=False),
    "saliency": lambda m: llmdbg.saliency(m, IDS_BATCH, target=3, progress=False),
    "occlusion": lambda m: llmdbg.occlusion(m, IDS_BATCH, target=3, progress=False),
    "gradient_rollout": lambda m: llmdbg.gradient_rollout(m, IDS_BATCH, target=3),
    "streaming_rollout": lambda m: llmdbg.streaming_rollout(m, IDS_BATCH, progress=False),
    "logit_lens": lambda m: llmdbg.logit_lens(m, IDS_BATCH, progress=False),
    "ablate": lambda m: llmdbg.ablate(m, IDS_BATCH, [(0, 1)], progress=False),
    "head_importance": lambda m: llmdbg.head_importance(
        m, IDS_BATCH, loss=lambda out, batch: out.logits[:, -1, 0].sum(), progress=False
    ),
    "patch": lambda m: llmdbg.patch(m, IDS_BATCH, IDS_BATCH, metric=_metric, progress=False),
}


def _capture(model, **kw):
    with llmdbg.capture(model, "blocks", **kw):
        model(input_ids=IDS_BATCH)


def _capture_generate(model):
    with llmdbg.capture(model, "blocks"):
        model.generate(IDS_BATCH[:1], max_new_tokens=3, do_sample=False)


def _state(model):
    """Everything a call may touch and must give back."""
    hooks = [
        (
            name,
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(m._backward_hooks),
            len(m._backward_pre_hooks),
            len(m._forward_hooks_with_kwargs),
        )
        for name, m in model.named_modules()
    ]
    impls = [
        (name, getattr(getattr(m, "config", None), "_attn_implementation", None)) for name, m in model.named_modules()
    ]
    return {
        "hooks": hooks,
        "attn_impl": impls,
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "instance_attrs": sorted(vars(model)),
        "grad_enabled": torch.is_grad_enabled(),
        "global_hooks": (
            len(torch.nn.modules.module._global_forward_hooks),
            len(torch.nn.modules.module._global_forward_pre_hooks),
        ),
    }


def _mix_modes(model):
    for i, m in enumerate(model.modules()):
        m.training = bool(i % 2)
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 3 != 0)


@pytest.mark.filterwarnings("ignore:the model is in train mode")
@pytest.mark.parametrize("name", list(CALLS))
def test_real_ctrl_c_in_the_forward_leaves_the_model_as_it_was(name):
    model = _llama()
    _mix_modes(model)
    model.config._attn_implementation = "sdpa"
    fired = []

    def send_sigint(module, args, output):
        if not fired:
            fired.append(True)
            # A real SIGINT: Python's default handler raises KeyboardInterrupt in the main thread at
            # the next bytecode, wherever llmdbg happens to be.
            os.kill(os.getpid(), signal.SIGINT)

    handle = model.model.layers[1].register_forward_hook(send_sigint)
    before = _state(model)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        CALLS[name](model)
    assert fired
    after = _state(model)
    params_before, params_after = before.pop("params"), after.pop("params")
    assert after == before
    assert all(torch.equal(a, b) for a, b in zip(params_before, params_after, strict=True))
    handle.remove()
    # And the model still runs and gives what it gave before the interrupted call.
    with torch.no_grad():
        clean = _llama()
        clean.load_state_dict(model.state_dict())
        torch.testing.assert_close(
            model(input_ids=IDS_BATCH).logits, clean.eval()(input_ids=IDS_BATCH).logits, rtol=0, atol=0
        )


def test_nothing_in_the_package_can_unpickle():
    """No code path of llmdbg loads a pickle: no pickle/marshal/shelve/dill/joblib loads, no
    torch.load, no numpy load with allow_pickle. Checkpoints are read by transformers
    (safetensors, or torch.load(weights_only=True), whose refusal the report turns into one line)."""
    import ast
    import pathlib

    banned_calls = {"load", "loads", "Unpickler", "open"}
    banned_modules = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "joblib", "cloudpickle"}
    root = pathlib.Path(llmdbg.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
                if owner_name in banned_modules and node.func.attr in banned_calls:
                    found.append(f"{path.name}:{node.lineno} {owner_name}.{node.func.attr}")
                if owner_name == "torch" and node.func.attr == "load":
                    found.append(f"{path.name}:{node.lineno} torch.load")
                if node.func.attr == "load" and any(
                    k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                    for k in node.keywords
                ):
                    found.append(f"{path.name}:{node.lineno} load(allow_pickle=...)")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    if name and name.split(".")[0] in banned_modules - {"pickle"}:
                        found.append(f"{path.name}:{node.lineno} import {name}")
    assert found == []


def test_every_test_the_guarantees_page_names_exists():
    """docs/guarantees.md backs each promise by a test: each named test must exist, so a renamed
    or deleted test cannot leave a promise unchecked."""
    import pathlib
    import re

    repo = pathlib.Path(__file__).resolve().parents[2]
    page = (repo / "docs" / "guarantees.md").read_text(encoding="utf-8")
    current = None
    named = []
    # `python/file.py::test_a` sets the file; a following `::test_b` refers to the same file.
    for path, name in re.findall(r"`(?:(python/[\w/]+\.py))?(?:::(test_\w+))?`", page):
        if path:
            current = path
            assert (repo / "tests" / path).is_file(), path
        if name:
            assert current is not None, name
            named.append((current, name))
    assert len(named) >= 30
    for path, name in named:
        source = (repo / "tests" / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} named in docs/guarantees.md does not exist"
