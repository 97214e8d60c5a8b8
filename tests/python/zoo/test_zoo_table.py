"""The zoo's table is complete and honest, and docs/support.md is rendered from it."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers as tf
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .expectations import EXCLUDED, FEATURES, PARITY, TABLE, Refusal, Upstream
from .families import enumerate_families

ROOT = Path(__file__).resolve().parents[3]
NON_TEXT_INPUTS = ("pixel", "image", "audio", "input_features", "input_values")


def test_every_family_is_tested_or_excluded() -> None:
    """A family a new transformers release adds fails here until the table says what to expect."""
    shipped = set(enumerate_families())
    assert not set(TABLE) & set(EXCLUDED), "a family is both tested and excluded"
    assert shipped - set(TABLE) - set(EXCLUDED) == set(), "families missing from zoo/expectations.py"
    assert (set(TABLE) | set(EXCLUDED)) - shipped == set(), "families transformers no longer ships"


def test_rows_are_complete() -> None:
    for family, row in TABLE.items():
        assert tuple(row) == FEATURES, family
        for spec in row.values():
            assert spec == PARITY or isinstance(spec, (Refusal, Upstream)), (family, spec)
            if isinstance(spec, Refusal):
                assert "{cls}" in spec.pattern, f"{family}: a refusal must name the model class"
            if not isinstance(spec, str):
                assert spec.reason and "\n" not in spec.reason, family


@pytest.mark.parametrize("family", sorted(EXCLUDED))
def test_exclusion_reason_holds(family: str) -> None:
    """Each exclusion is checked, not just claimed."""
    fam, reason = enumerate_families()[family], EXCLUDED[family]
    cls = getattr(tf, fam.cls_name)
    params = inspect.signature(cls.forward).parameters
    if "drafter" in reason:
        assert "shared_kv_states" in params
    elif "builds the same text decoder as" in reason:
        other = reason.split(" as ")[1].split()[0]
        assert other in TABLE and enumerate_families()[other].cls_name == fam.cls_name
        assert "text_config" in CONFIG_MAPPING[family].sub_configs
    elif "audio codebooks" in reason:
        assert "audio_encoder" in CONFIG_MAPPING[family].sub_configs
    else:  # speech and vision models
        assert any(k in p for p in params for k in NON_TEXT_INPUTS), f"{fam.cls_name} takes text only"


def test_support_page_is_up_to_date() -> None:
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "support_matrix.py"), "--stdout"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    committed = (ROOT / "docs" / "support.md").read_text(encoding="utf-8")
    assert committed == rendered, "docs/support.md is stale: run python3 tools/support_matrix.py"
