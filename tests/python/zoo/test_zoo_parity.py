"""The zoo: every text family transformers ships × blocks, maps, lens, watch, patch.

One test per (family, feature), run family by family so that each tiny model is built once.
What each test expects is ``expectations.TABLE``: parity with the model's own computation
(``checks.py``), or a refusal naming the family, or a reference transformers itself cannot
compute. Every test also checks that the feature left the model as it found it (hooks, attention
implementation, train/eval flags, requires_grad, gradients).
"""

from __future__ import annotations

import os
import re

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built from configs; never download

from tiny_models import one_thread  # noqa: F401  (autouse: one OpenMP thread for tiny models)

from .checks import FEATURES, REFERENCES, snapshot
from .expectations import TABLE, Refusal, Upstream
from .families import build, inputs

# Models that compute attention themselves get eager attention, with this documented warning.
pytestmark = pytest.mark.filterwarnings("ignore:llmdbg.capture. attention comes from eager attention:UserWarning")

CASES = [(family, feature) for family in sorted(TABLE) for feature in TABLE[family]]
# The brief's contract for bad or unsupported input: ValueError or TypeError, nothing else.
REFUSALS = (ValueError, TypeError)


def _refused(family: str, feature: str, spec: Refusal, model, x) -> None:
    cls = type(model).__name__
    try:
        FEATURES[feature](model, x)
    except REFUSALS as err:
        message = str(err)
    except AssertionError as err:
        pytest.fail(f"{family}/{feature}: expected a refusal ({spec.reason}); llmdbg returned a wrong result: {err}")
    else:
        pytest.fail(f"{family}/{feature} now reproduces the model: set TABLE[{family!r}][{feature!r}] = PARITY")
    pattern = spec.pattern.format(cls=re.escape(cls))
    assert re.search(pattern, message), f"{family}/{feature}: the error does not match {pattern!r}: {message}"
    names = (cls, model.config.model_type)
    assert any(n in message for n in names), f"{family}/{feature}: the error names neither of {names}: {message}"


def _upstream(family: str, feature: str, spec: Upstream, model, x) -> None:
    try:
        REFERENCES[feature](model, x)
    except Exception:  # whatever transformers raises: it must still fail
        return
    pytest.fail(
        f"{family}/{feature}: transformers now computes the reference: set TABLE[{family!r}][{feature!r}] = PARITY"
    )


@pytest.mark.parametrize(("family", "feature"), CASES, ids=[f"{f}-{g}" for f, g in CASES])
def test_zoo(family: str, feature: str) -> None:
    model, x = build(family), inputs(family)
    spec = TABLE[family][feature]
    before = snapshot(model)
    try:
        if isinstance(spec, Refusal):
            _refused(family, feature, spec, model, x)
        elif isinstance(spec, Upstream):
            _upstream(family, feature, spec, model, x)
        else:
            FEATURES[feature](model, x)
    except BaseException as err:
        if snapshot(model) != before:
            build.cache_clear()  # the next feature gets a clean model
            raise AssertionError(f"{family}/{feature} failed and left the model changed") from err
        raise
    if snapshot(model) != before:
        build.cache_clear()
        pytest.fail(f"{family}/{feature} left the model changed: {_diff(before, snapshot(model))}")


def _diff(before: dict, after: dict) -> str:
    return ", ".join(f"{k}: {before[k]!r:.60} -> {after[k]!r:.60}" for k in before if before[k] != after[k])
