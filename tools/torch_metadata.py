"""scikit-build-core metadata provider: a wheel records the torch it was built against.

pyproject.toml names this module for ``version`` and ``dependencies``. The extension links the
installed torch's C++ library, whose ABI changes with every minor release, so a wheel (or an
editable install) gets

* a local version label, ``0.2.0+torch2.13``, and
* a torch requirement pinned to that minor, ``torch>=2.13,<2.14`` (as xformers pins its wheels).

The sdist stays torch-agnostic: an override for the ``sdist`` state sets ``pin-torch = false``,
which keeps the plain version and the lower bound written in pyproject.toml.

The torch version comes from the installed distribution's metadata (no ``import torch``), read
by the same interpreter that CMake later asks for torch's headers and libraries. Without torch
the build stops here with the command to run: almost always the build ran in pip's isolated
environment, which cannot see the torch installed next to it.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_MAJOR_MINOR = re.compile(r"^(\d+)\.(\d+)")


def _pin(settings: Mapping[str, Any]) -> bool:
    value = settings.get("pin-torch", True)
    if isinstance(value, str):  # config-settings and environment overrides arrive as strings
        return value.strip().lower() not in {"0", "false", "no", "off"}
    return bool(value)


def _source_hint() -> str:
    """The checkout being built (pip builds a local directory in place), or a placeholder when
    pip unpacked a git clone or an sdist into a temporary directory."""
    here = Path.cwd().resolve()
    if (here / "pyproject.toml").is_file() and not here.is_relative_to(Path(tempfile.gettempdir()).resolve()):
        return str(here)
    return "<the same path or git URL>"


def _installed_torch() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        python = sys.executable or "python"
        lines = [
            "",
            "llmdbg's C++ extension is built against the torch installed in the environment it",
            "goes into, and this build cannot see any torch: pip builds in an isolated environment",
            "unless told not to. In the environment you want llmdbg in, run:",
            "",
            f"    {python} -m pip install torch      # only if torch is not installed yet",
            f'    {python} -m pip install "scikit-build-core>=0.11" cmake ninja',
            f"    {python} -m pip install --no-build-isolation {_source_hint()}",
            "",
            "A C++20 compiler and Eigen are needed too (Debian/Ubuntu: apt-get install g++ libeigen3-dev).",
            "",
        ]
        raise SystemExit("\n".join(lines)) from None


def _minor(version: str) -> tuple[int, int]:
    match = _MAJOR_MINOR.match(version)
    if match is None:
        raise SystemExit(f"llmdbg: cannot read a major.minor torch version from {version!r}")
    return int(match[1]), int(match[2])


def torch_local_label(torch_version: str) -> str:
    """``"2.13.0+cpu"`` -> ``"torch2.13"``."""
    major, minor = _minor(torch_version)
    return f"torch{major}.{minor}"


def torch_requirement(torch_version: str) -> str:
    """The requirement that admits exactly the torch minor of ``torch_version``:
    ``"torch>=2.13,<2.14"``; pre-releases of that minor too when the build's torch is one."""
    from packaging.version import Version  # a dependency of scikit-build-core

    major, minor = _minor(torch_version)
    low = f"{major}.{minor}.0.dev0" if Version(torch_version).is_prerelease else f"{major}.{minor}"
    return f"torch>={low},<{major}.{minor + 1}"


def dynamic_metadata(field: str, settings: Mapping[str, Any]) -> str | list[str]:
    """The scikit-build-core hook (the ``tool.scikit-build.metadata`` table's interface)."""
    pin = _pin(settings)
    if field == "version":
        version = settings.get("version")
        if not isinstance(version, str) or not version:
            raise RuntimeError('torch_metadata: set version = "X.Y.Z" in [tool.scikit-build.metadata.version]')
        return f"{version}+{torch_local_label(_installed_torch())}" if pin else version
    if field == "dependencies":
        requirements = settings.get("dependencies")
        if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
            raise RuntimeError("torch_metadata: set dependencies = [...] in [tool.scikit-build.metadata.dependencies]")
        if not pin:
            return list(requirements)
        pinned = torch_requirement(_installed_torch())
        out = []
        for requirement in requirements:
            name = _REQUIREMENT_NAME.match(requirement)
            out.append(pinned if name is not None and name[1].lower() == "torch" else requirement)
        if pinned not in out:
            out.insert(0, pinned)
        return out
    raise RuntimeError(f"torch_metadata provides version and dependencies, not {field!r}")
