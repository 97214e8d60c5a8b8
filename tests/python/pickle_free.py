"""Checks shared by the tests of saved objects: nothing written is a pickle, nothing read unpickles."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from llmdbg._internal.archive import ARRAYS_FILE, META_FILE


def assert_no_pickle(path: Path) -> None:
    """A saved directory holds exactly meta.json and arrays.safetensors, neither a pickle."""
    assert sorted(os.listdir(path)) == [ARRAYS_FILE, META_FILE]
    for f in Path(path).iterdir():
        assert f.read_bytes()[:1] != b"\x80", f"{f.name} starts like a pickle"


@pytest.fixture
def no_unpickling(monkeypatch):
    """pickle.load/loads, np.load and torch.load raise while the test runs."""

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle or np.load")

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
