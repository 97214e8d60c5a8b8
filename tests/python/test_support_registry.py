"""The registry of families a feature cannot follow (``llmdbg.adapters.support``).

Its refusals must name the model class and family, fire before any run (no partial or wrong
result, the model left as it was), and agree entry for entry with the zoo table
(``tests/python/zoo/expectations.py``), which renders ``docs/support.md``: the two cannot drift.
"""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the zoo builds every model from a config

import llmdbg
from llmdbg.adapters.support import FEATURE_NAMES, UNSUPPORTED, require_support
from tiny_models import one_thread  # noqa: F401  (autouse: one OpenMP thread for tiny models)
from zoo.checks import snapshot
from zoo.expectations import TABLE, Refusal
from zoo.families import build, inputs

REGISTRY_MESSAGE = "is not supported by"  # what every registry refusal says (and no other error)


class _Stub(nn.Module):
    """A module with a transformers-like config of family ``model_type`` (no weights)."""

    def __init__(self, model_type: str) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type=model_type)


def _registry_pairs() -> set[tuple[str, str]]:
    return {(family, feature) for family, features in UNSUPPORTED.items() for feature in features}


def _table_pairs() -> set[tuple[str, str]]:
    return {
        (family, feature)
        for family, row in TABLE.items()
        for feature, spec in row.items()
        if isinstance(spec, Refusal) and REGISTRY_MESSAGE in spec.pattern
    }


def test_registry_lists_known_families_and_features() -> None:
    assert UNSUPPORTED, "the registry is empty"
    for family, features in UNSUPPORTED.items():
        assert family in TABLE, f"{family!r} is not a family of the zoo table"
        for feature, reason in features.items():
            assert feature in FEATURE_NAMES, f"{family}: unknown feature {feature!r}"
            assert isinstance(reason, str) and reason.strip(), f"{family}/{feature}: empty reason"


def test_every_registry_entry_is_a_table_refusal() -> None:
    missing = sorted(_registry_pairs() - _table_pairs())
    assert not missing, f"refused by llmdbg but not a registry Refusal in the zoo table: {missing}"


def test_every_registry_refusal_of_the_table_is_in_the_registry() -> None:
    missing = sorted(_table_pairs() - _registry_pairs())
    assert not missing, f"the zoo table expects a registry refusal that llmdbg does not list: {missing}"


@pytest.mark.parametrize(("family", "feature"), sorted(_registry_pairs()))
def test_message_names_class_and_family_and_matches_the_table(family: str, feature: str) -> None:
    model = _Stub(family)
    with pytest.raises(ValueError) as err:
        require_support(model, feature)
    message = str(err.value)
    assert message.startswith(f"_Stub (model_type {family!r}) {REGISTRY_MESSAGE} {FEATURE_NAMES[feature]}: ")
    assert UNSUPPORTED[family][feature] in message
    spec = TABLE[family][feature]
    assert isinstance(spec, Refusal)
    assert re.search(spec.pattern.format(cls=re.escape("_Stub")), message), (spec.pattern, message)


def test_other_families_and_features_pass() -> None:
    require_support(_Stub("llama"), "blocks")
    require_support(nn.Linear(2, 2), "patch")  # no config: nothing to refuse
    supported = next(f for f in FEATURE_NAMES if f not in UNSUPPORTED["reformer"])
    require_support(_Stub("reformer"), supported)


@pytest.mark.parametrize("feature", ["watch", "block", "", "BLOCKS"])
def test_unknown_feature_names_raise(feature: str) -> None:
    with pytest.raises(ValueError, match=r"feature must be one of \['blocks', 'lens', 'maps', 'patch'\]"):
        require_support(_Stub("llama"), feature)


@pytest.mark.parametrize("feature", [None, ["blocks"], 1])
def test_non_string_features_raise_type_error(feature: object) -> None:
    with pytest.raises(TypeError, match=r"feature must be a str, one of \['blocks'"):
        require_support(_Stub("llama"), feature)  # type: ignore[arg-type]


def test_wrapped_model_names_the_transformers_class() -> None:
    class Head(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

    with pytest.raises(ValueError, match=r"^FunnelForMaskedLM \(model_type 'funnel'\) is not supported by"):
        require_support(Head(build("funnel")), "blocks")


def test_patch_refuses_before_any_run() -> None:
    """HRM's patch identity was off by 5e-4 (a silent wrong result): now refused before the metric runs."""
    model, x = build("hrm_text"), inputs("hrm_text")
    before = snapshot(model)
    calls: list[object] = []

    def metric(out: object) -> torch.Tensor:
        calls.append(out)
        return torch.zeros(())

    with pytest.raises(ValueError, match=r"^HrmTextForCausalLM \(model_type 'hrm_text'\) is not supported by"):
        llmdbg.patch(model, x, x, metric=metric, progress=False)
    assert not calls, "the model ran before the refusal"
    assert snapshot(model) == before


@pytest.mark.parametrize("family", ["hrm_text", "inkling2_text"])
def test_lens_refuses_by_family(family: str) -> None:
    """hrm_text's lens claimed it was an encoder-decoder; inkling2's lens read the wrong state."""
    model, x = build(family), inputs(family)
    cls = type(model).__name__
    with pytest.raises(ValueError, match=rf"^{cls} \(model_type '{family}'\) is not supported by the logit lens"):
        llmdbg.logit_lens(model, x, progress=False)


def test_explicit_modules_still_capture() -> None:
    """The message's promise: naming modules explicitly still records them on a refused family."""
    model, x = build("hrm_text"), inputs("hrm_text")
    name = "model.H_module.layers.0"
    with pytest.raises(ValueError, match="not supported by per-block hidden states"):
        with llmdbg.capture(model, "blocks"):
            pass
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            model(**x)
    finally:
        handle.remove()
    with llmdbg.capture(model, [name]) as trace, torch.no_grad():
        model(**x)
    calls = trace.calls(name)
    assert len(calls) == len(seen) > 1  # H_cycles calls of one layer
    for got, expected in zip(calls, seen, strict=True):
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)
