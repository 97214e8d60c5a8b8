"""The import-time check that the extension fits the running torch: a torch of another minor
version, or an extension the loader rejects, raise an ImportError that names both torch versions
and the rebuild command."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import llmdbg
from llmdbg._internal import build_check


@pytest.fixture
def versions(monkeypatch):
    """Set the running torch's version and the build's recorded one."""

    def set_versions(running: str, built: str | None) -> None:
        monkeypatch.setattr(torch, "__version__", running)
        if built is None:
            monkeypatch.setitem(sys.modules, "llmdbg._build_info", None)  # an unrecorded build
        else:
            info = types.ModuleType("llmdbg._build_info")
            info.TORCH_VERSION = built
            monkeypatch.setitem(sys.modules, "llmdbg._build_info", info)

    return set_versions


def test_the_installed_build_records_the_running_torch():
    from llmdbg import _build_info

    assert _build_info.TORCH_VERSION == str(torch.__version__)
    assert build_check.built_torch_version() == str(torch.__version__)
    build_check.check_torch_build()  # passes as it is


@pytest.mark.parametrize(
    "running, built",
    [
        ("2.13.0+cpu", "2.13.0+cpu"),
        ("2.13.1", "2.13.0+cpu"),  # patch releases keep the ABI
        ("2.13.0+cu130", "2.13.0+cpu"),  # same minor, other build: left to the loader (next test)
        ("2.13.0", None),  # a build from before the record: nothing to compare
    ],
)
def test_same_minor_passes(versions, running, built):
    versions(running, built)
    build_check.check_torch_build()


@pytest.mark.parametrize(
    "running, built",
    [
        ("2.14.0", "2.13.0+cpu"),
        ("2.12.1+cu128", "2.13.0+cpu"),
        ("3.0.0", "2.13.0"),
        ("2.14.0.dev20260901+cpu", "2.13.0+cpu"),
    ],
)
def test_other_minor_raises_naming_both_versions_and_the_rebuild(versions, running, built):
    versions(running, built)
    with pytest.raises(ImportError) as info:
        build_check.check_torch_build()
    message = str(info.value)
    assert f"built against torch {built}" in message
    assert f"torch {running} is imported" in message
    assert "-m pip install --no-build-isolation --force-reinstall --no-deps" in message
    major, minor = built.split(".")[:2]
    assert f'pip install "torch=={major}.{minor}.*"' in message  # or go back to the build's torch
    assert info.value.name == "llmdbg._core"


def test_extension_that_fails_to_load_raises_with_the_same_advice(versions, monkeypatch):
    versions("2.13.0+cpu", "2.13.0+cpu")
    # None in sys.modules makes the import fail as an undefined symbol would, with an ImportError.
    monkeypatch.setitem(sys.modules, "llmdbg._core", None)
    with pytest.raises(ImportError) as info:
        build_check.check_torch_build()
    message = str(info.value)
    assert "llmdbg._core) failed to load" in message
    assert "built against torch 2.13.0+cpu; torch 2.13.0+cpu is imported" in message
    assert "--no-build-isolation --force-reinstall" in message
    assert isinstance(info.value.__cause__, ImportError)  # the loader's own error stays attached


def test_extension_failure_without_a_record_still_names_the_running_torch(versions, monkeypatch):
    versions("2.14.0", None)
    monkeypatch.setitem(sys.modules, "llmdbg._core", None)
    with pytest.raises(ImportError, match=r"an unrecorded torch version; torch 2\.14\.0 is imported"):
        build_check.check_torch_build()


@pytest.mark.parametrize(
    "direct_url, command_tail",
    [
        (
            {
                "url": "https://github.com/org/llmdbg.git",
                "vcs_info": {"vcs": "git", "commit_id": "0123abc", "requested_revision": "main"},
            },
            "--no-deps git+https://github.com/org/llmdbg.git@0123abc",
        ),
        ({"url": "file:///home/me/src/llm%20dbg", "dir_info": {}}, "--no-deps /home/me/src/llm dbg"),
        ({"url": "file:///home/me/src/llmdbg", "dir_info": {"editable": True}}, "--no-deps -e /home/me/src/llmdbg"),
        (
            {"url": "file:///tmp/dist/llmdbg-0.2.0.tar.gz", "archive_info": {}},
            "--no-deps /tmp/dist/llmdbg-0.2.0.tar.gz",
        ),
        # A wheel or an index install: the source is not known.
        (
            {"url": "file:///tmp/dist/llmdbg-0.2.0+torch2.13-cp311-cp311-linux_x86_64.whl", "archive_info": {}},
            "--no-deps <path or git URL of the llmdbg source>",
        ),
        ({}, "--no-deps <path or git URL of the llmdbg source>"),
    ],
)
def test_rebuild_command_points_at_the_install_source(direct_url, command_tail):
    command = build_check.rebuild_command(direct_url)
    assert command.startswith(f"{sys.executable} -m pip install --no-build-isolation --force-reinstall ")
    assert command.endswith(command_tail)


def test_installed_version_is_the_package_version_with_the_build_torch():
    from importlib import metadata

    major, minor = str(torch.__version__).split(".")[:2]
    assert llmdbg.__version__ == "0.2.0"
    assert metadata.version("llmdbg") == f"{llmdbg.__version__}+torch{major}.{minor}"
    assert f"torch<{major}.{int(minor) + 1},>={major}.{minor}" in metadata.requires("llmdbg")
