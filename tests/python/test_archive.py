"""The saved-object format (_internal/archive.py): arrays round-trip bit for bit (NaN payloads,
0-size, 0-d, non-contiguous and big-endian arrays), the write is atomic and never replaces what
is not ours, and every bad directory gives a clear ValueError. Nothing is ever unpickled."""

from __future__ import annotations

import json
import os
import pickle

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import _hypothesis_profiles  # noqa: F401 - registers and loads the profile
from llmdbg._internal import archive
from llmdbg._internal.archive import ARRAYS_FILE, META_FILE, VERSION, read_archive, read_meta, write_archive


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-equal: dtype, shape and raw bytes (NaN payloads included)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _assert_no_pickle(path):
    assert sorted(os.listdir(path)) == [ARRAYS_FILE, META_FILE]
    for name in os.listdir(path):
        head = (path / name).read_bytes()[:2]
        assert head[:1] != b"\x80", f"{name} starts like a pickle"


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickling while this fixture is active fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle or np.load")

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)


def _nan_payloads() -> np.ndarray:
    bits = np.array([0x7FC00001, 0xFFC12345, 0x7F800001, 0x7F800000, 0x80000000], dtype=np.uint32)
    return bits.view(np.float32)  # quiet and signalling NaNs with payloads, inf, -0.0


ARRAYS = {
    "float32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "nan_payloads": _nan_payloads(),
    "float16": np.array([1.5, np.nan, -np.inf, 6.1e-5], dtype=np.float16),
    "float64": np.array([[np.pi, -0.0], [np.nan, 1e-310]]),
    "int64": np.array([-(2**63), 2**63 - 1, 0]),
    "uint8": np.arange(5, dtype=np.uint8),
    "int32": np.array([[7]], dtype=np.int32),
    "bool": np.array([True, False, True]),
    "empty": np.zeros((0, 3, 2), dtype=np.float32),
    "empty_1d": np.zeros(0, dtype=np.int64),
    "scalar": np.array(2.5),
    "name with / and : and é": np.ones(2, np.float32),
}


def test_round_trip_is_bit_equal(tmp_path, no_unpickling):
    meta = {"tokens": [["a", "é", "\u2581x", ""]], "n": 3, "nested": {"x": [1, None, True]}}
    write_archive(tmp_path / "a", "thing", meta, ARRAYS)
    got_meta, got = read_archive(tmp_path / "a", ["thing"])
    assert set(got) == set(ARRAYS)
    for name, a in ARRAYS.items():
        assert _same(a, got[name]), name
    assert {k: got_meta[k] for k in meta} == meta
    assert got_meta["format"] == "llmdbg" and got_meta["version"] == VERSION and got_meta["kind"] == "thing"
    assert got_meta["arrays"]["empty"] == {"dtype": "float32", "shape": [0, 3, 2]}
    assert got_meta["arrays"]["scalar"] == {"dtype": "float64", "shape": []}
    _assert_no_pickle(tmp_path / "a")


def test_non_contiguous_and_big_endian_arrays_keep_their_values(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = {
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "negative": base[::-1],
        "fortran": np.asfortranarray(base),
        "big_endian": base.astype(">f4"),
    }
    write_archive(tmp_path / "a", "thing", {}, arrays)
    _, got = read_archive(tmp_path / "a", ["thing"])
    for name, a in arrays.items():
        np.testing.assert_array_equal(got[name], a)
        assert got[name].shape == a.shape and got[name].dtype == a.dtype.newbyteorder("="), name


@given(
    a=hnp.arrays(
        dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64, np.uint16, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4),
        elements=None,
    ),
    transpose=st.booleans(),
)
def test_any_array_round_trips(tmp_path_factory, a, transpose):
    a = a.T if transpose else a
    path = tmp_path_factory.mktemp("p") / "a"
    write_archive(path, "thing", {}, {"x": a})
    _, got = read_archive(path, ["thing"])
    assert _same(np.ascontiguousarray(a) if a.ndim else a, got["x"])


# -- what cannot be saved ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arrays", "meta", "exc", "match"),
    [
        ({"c": np.array([1 + 2j])}, {}, TypeError, "array 'c' has dtype complex128"),
        ({"o": np.array(["x"], dtype=object)}, {}, TypeError, "array 'o' has dtype object"),
        ({"s": np.array(["x"])}, {}, TypeError, "array 's' has dtype <U1"),
        ({"t": [1.0, 2.0]}, {}, TypeError, "array 't' must be a numpy.ndarray, got list"),
        ({"__metadata__": np.ones(1)}, {}, ValueError, "array names"),
        ({}, {"x": float("nan")}, ValueError, "meta is not plain JSON"),
        ({}, {"x": object()}, ValueError, "meta is not plain JSON"),
        ({}, {"version": 3}, ValueError, "reserved keys"),
    ],
)
def test_bad_content_is_refused_before_anything_is_written(tmp_path, arrays, meta, exc, match):
    with pytest.raises(exc, match=match):
        write_archive(tmp_path / "a", "thing", meta, arrays)
    assert os.listdir(tmp_path) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        write_archive(3, "thing", {}, {})
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        write_archive(tmp_path / "a", "thing", {}, {}, overwrite="yes")
    with pytest.raises(ValueError, match="parent directory .* does not exist"):
        write_archive(tmp_path / "no" / "a", "thing", {}, {})
    with pytest.raises(TypeError, match="path must be a str"):
        read_meta(None)


# -- overwrite and atomicity -------------------------------------------------------------------------
def test_existing_paths(tmp_path):
    write_archive(tmp_path / "a", "thing", {"v": 1}, {"x": np.ones(2)})
    with pytest.raises(ValueError, match=r"'.*a' already exists and is not empty; pass overwrite=True"):
        write_archive(tmp_path / "a", "thing", {"v": 2}, {})
    assert read_meta(tmp_path / "a")["v"] == 1
    write_archive(tmp_path / "a", "thing", {"v": 2}, {"y": np.zeros(1)}, overwrite=True)
    meta, arrays = read_archive(tmp_path / "a", ["thing"])
    assert meta["v"] == 2 and list(arrays) == ["y"]
    (tmp_path / "empty").mkdir()
    write_archive(tmp_path / "empty", "thing", {}, {})  # an empty directory is filled
    assert read_meta(tmp_path / "empty")["kind"] == "thing"
    assert sorted(os.listdir(tmp_path)) == ["a", "empty"]  # no temporary or old directory left


@pytest.mark.parametrize("what", ["dir", "file"])
def test_overwrite_never_replaces_what_llmdbg_did_not_write(tmp_path, what):
    target = tmp_path / "mine"
    if what == "dir":
        target.mkdir()
        (target / "notes.txt").write_text("keep me")
    else:
        target.write_text("keep me")
    with pytest.raises(ValueError, match="is not a saved llmdbg object .* refusing to replace it"):
        write_archive(target, "thing", {}, {}, overwrite=True)
    assert (target / "notes.txt" if what == "dir" else target).read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["mine"]


def test_a_failing_write_leaves_no_half_directory_and_the_old_one_intact(tmp_path, monkeypatch):
    write_archive(tmp_path / "a", "thing", {"v": 1}, {"x": np.arange(3)})
    before = {n: (tmp_path / "a" / n).read_bytes() for n in os.listdir(tmp_path / "a")}
    import safetensors.numpy

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", failing_save)
    for target, overwrite in ((tmp_path / "a", True), (tmp_path / "b", False)):
        with pytest.raises(OSError, match="disk full"):
            write_archive(target, "thing", {"v": 2}, {"x": np.zeros(3)}, overwrite=overwrite)
    assert sorted(os.listdir(tmp_path)) == ["a"]
    assert {n: (tmp_path / "a" / n).read_bytes() for n in os.listdir(tmp_path / "a")} == before


def test_a_failing_rename_puts_the_old_object_back(tmp_path, monkeypatch):
    write_archive(tmp_path / "a", "thing", {"v": 1}, {})
    real = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new directory into place
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(archive.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        write_archive(tmp_path / "a", "thing", {"v": 2}, {}, overwrite=True)
    assert read_meta(tmp_path / "a")["v"] == 1
    assert sorted(os.listdir(tmp_path)) == ["a"]


# -- reading what is not ours ------------------------------------------------------------------------
def _saved(tmp_path):
    return write_archive(tmp_path / "a", "thing", {}, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})


def test_newer_version_gives_the_upgrade_message(tmp_path):
    path = _saved(tmp_path)
    meta = json.loads((path / META_FILE).read_text())
    meta["version"] = VERSION + 1
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(
        ValueError,
        match=rf"saved by a newer llmdbg \(format version {VERSION + 1}, llmdbg .*\); this llmdbg reads up to "
        rf"version {VERSION}: upgrade llmdbg",
    ):
        read_archive(path, ["thing"])


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda p: (p / META_FILE).unlink(), "is not a saved llmdbg object: it has no meta.json"),
        (lambda p: (p / META_FILE).write_text("{not json"), "is not a readable llmdbg meta.json"),
        (lambda p: (p / META_FILE).write_bytes(b"\xff\xfe"), "is not a readable llmdbg meta.json"),
        (lambda p: (p / META_FILE).write_text('{"format": "other"}'), "was not written by llmdbg"),
        (lambda p: (p / META_FILE).write_text("[1, 2]"), "was not written by llmdbg"),
        (lambda p: _edit_meta(p, version="1"), "has no valid format version"),
        (lambda p: _edit_meta(p, version=0), "has no valid format version"),
        (lambda p: _edit_meta(p, kind=None), "lacks the 'kind' or 'arrays' field"),
        (lambda p: (p / ARRAYS_FILE).unlink(), "is incomplete: arrays.safetensors is missing"),
        (lambda p: (p / ARRAYS_FILE).write_bytes(b"garbage"), "is corrupted"),
        (lambda p: _truncate(p / ARRAYS_FILE), "is corrupted"),
        (lambda p: _edit_meta(p, arrays={}), r"does not match meta.json: missing arrays \[\], unlisted arrays \['x'\]"),
        (
            lambda p: _edit_meta(p, arrays={"x": {"dtype": "float32", "shape": [3, 2]}}),
            r"array 'x' is float32 \[2, 3\], meta.json says",
        ),
    ],
)
def test_broken_directories_give_clear_errors(tmp_path, no_unpickling, edit, match):
    path = _saved(tmp_path)
    edit(path)
    with pytest.raises(ValueError, match=match):
        read_archive(path, ["thing"])


def _edit_meta(path, **changes):
    meta = json.loads((path / META_FILE).read_text())
    meta.update(changes)
    (path / META_FILE).write_text(json.dumps(meta))


def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 5])


def test_missing_paths_and_wrong_kind(tmp_path):
    with pytest.raises(ValueError, match="does not exist or is a file"):
        read_archive(tmp_path / "nothing", ["thing"])
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="does not exist or is a file"):
        read_archive(tmp_path / "f", ["thing"])
    path = _saved(tmp_path)
    with pytest.raises(ValueError, match=r"holds a saved 'thing', not 'trace' or 'watch'; llmdbg.load\(path\)"):
        read_archive(path, ["trace", "watch"])
