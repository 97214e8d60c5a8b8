"""Is the compiled extension usable with the torch imported now?

The extension links libtorch, whose C++ ABI changes with every minor release: an llmdbg built
against torch 2.13 and imported with torch 2.14 fails deep in the dynamic loader with an
"undefined symbol" error that names neither version. :func:`check_torch_build` runs first thing
in ``llmdbg/__init__.py`` and turns that into an ``ImportError`` naming both torch versions and
the command that rebuilds llmdbg. The torch of the build is in ``llmdbg/_build_info.py``, which
CMake writes next to the extension (cpp/bindings/CMakeLists.txt).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import urllib.parse
from typing import Any

_PACKAGE = __name__.split(".", 1)[0]
_MAJOR_MINOR = re.compile(r"^\s*(\d+)\.(\d+)")
_SOURCE_PLACEHOLDER = "<path or git URL of the llmdbg source>"


def _major_minor(version: str) -> tuple[int, int] | None:
    match = _MAJOR_MINOR.match(version)
    return (int(match[1]), int(match[2])) if match else None


def built_torch_version() -> str | None:
    """The torch version the installed extension was compiled against, or None for a build that
    predates ``_build_info.py`` (or a source tree that was never built)."""
    try:
        info = importlib.import_module(f"{_PACKAGE}._build_info")
    except ModuleNotFoundError as err:
        if err.name in (f"{_PACKAGE}._build_info", _PACKAGE):
            return None
        raise
    return str(info.TORCH_VERSION)


def _direct_url() -> dict[str, Any] | None:
    """PEP 610 ``direct_url.json`` of the installed llmdbg: where pip installed it from."""
    try:
        from importlib import metadata

        text = metadata.distribution(_PACKAGE).read_text("direct_url.json")
        return json.loads(text) if text else None
    except Exception:  # no distribution, an unreadable or a malformed record
        return None


def install_source(direct_url: dict[str, Any] | None) -> tuple[str, bool]:
    """``(source, editable)`` for a pip command that rebuilds llmdbg, from a PEP 610 record.

    A git install gives ``git+URL@commit``, a local checkout or sdist its path; a wheel, an index
    install or no record give a placeholder, since the source is not known.
    """
    if not direct_url or not isinstance(direct_url.get("url"), str):
        return _SOURCE_PLACEHOLDER, False
    url: str = direct_url["url"]
    vcs = direct_url.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs"):
        revision = vcs.get("commit_id") or vcs.get("requested_revision")
        return f"{vcs['vcs']}+{url}" + (f"@{revision}" if revision else ""), False
    path = urllib.parse.unquote(url[len("file://") :]) if url.startswith("file://") else url
    dir_info = direct_url.get("dir_info")
    if isinstance(dir_info, dict):
        return path, bool(dir_info.get("editable"))
    if path.endswith(".whl"):  # a wheel holds no sources to rebuild from
        return _SOURCE_PLACEHOLDER, False
    return path, False


def rebuild_command(direct_url: dict[str, Any] | None = None) -> str:
    """The pip command that rebuilds llmdbg against the torch of this environment."""
    source, editable = install_source(_direct_url() if direct_url is None else direct_url)
    python = sys.executable or "python"
    return (
        f"{python} -m pip install --no-build-isolation --force-reinstall --no-deps "
        + ("-e " if editable else "")
        + source
    )


def _advice(built: str | None, running: str) -> str:
    lines = [
        "Rebuild llmdbg against the torch you have (needs scikit-build-core, cmake, ninja, a C++20 "
        "compiler and Eigen, e.g. apt-get install g++ libeigen3-dev):",
        f"    {rebuild_command()}",
    ]
    built_minor = _major_minor(built) if built else None
    if built_minor is not None and built_minor != _major_minor(running):
        major, minor = built_minor
        lines += [
            "or install the torch llmdbg was built for:",
            f'    {sys.executable or "python"} -m pip install "torch=={major}.{minor}.*"',
        ]
    return "\n".join(lines)


def check_torch_build() -> None:
    """Raise ``ImportError`` unless the extension fits the torch imported now.

    Compares the major.minor of the build's torch with ``torch.__version__`` (builds that predate
    the record are not compared), then imports ``llmdbg._core`` and turns a loader failure (an
    undefined symbol, a missing library) into the same advice. Both messages name the two torch
    versions and the pip command that rebuilds llmdbg.
    """
    import torch

    running = str(torch.__version__)
    built = built_torch_version()
    if built is not None and _major_minor(built) != _major_minor(running):
        raise ImportError(
            f"llmdbg was built against torch {built}, but torch {running} is imported: its C++ "
            f"extension only works with the torch minor version it was compiled for "
            f"({'.'.join(map(str, _major_minor(built) or ()))}).\n{_advice(built, running)}",
            name=f"{_PACKAGE}._core",
        )
    try:
        importlib.import_module(f"{_PACKAGE}._core")
    except ImportError as err:
        built_text = f"torch {built}" if built is not None else "an unrecorded torch version"
        raise ImportError(
            f"llmdbg's C++ extension ({_PACKAGE}._core) failed to load: {err}\n"
            f"It was built against {built_text}; torch {running} is imported. An extension built "
            f"for another torch (or another build of it: CPU/CUDA, C++ ABI) fails this way.\n"
            f"{_advice(built, running)}",
            name=f"{_PACKAGE}._core",
        ) from err
