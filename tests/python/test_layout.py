"""The package layout keeps its rules: every folder documented, no private imports across
packages, no oversized modules without a reason, old import paths still working."""

from __future__ import annotations

import ast
import importlib
import re
import warnings
from pathlib import Path

import pytest

import llmdbg

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "python" / "llmdbg"
MAX_LINES = 500


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _package_of(path: Path) -> tuple[str, ...]:
    return path.relative_to(PACKAGE).parent.parts


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = ("llmdbg", *_package_of(path))
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def test_every_package_folder_is_in_the_architecture_page():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    folders = sorted(p.parent.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("__init__.py"))
    missing = [f for f in folders if f"`{f.removeprefix('llmdbg/')}/`" not in text and f != "llmdbg"]
    assert not missing, f"docs/architecture.md does not describe {missing}"
    cpp = sorted(p.name for p in (ROOT / "cpp").iterdir() if p.is_dir())
    assert all(f"`cpp/{d}/`" in text for d in cpp), f"docs/architecture.md misses a cpp folder of {cpp}"


def test_no_private_module_of_another_package_is_imported():
    bad = []
    for path in _modules():
        own = "llmdbg." + ".".join(_package_of(path)) if _package_of(path) else "llmdbg"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _absolute(path, node)
            names = [target + "." + a.name for a in node.names]
            for full in [target, *names]:
                parts = full.split(".")
                private = [i for i, part in enumerate(parts) if part.startswith("_") and not part.startswith("__")]
                if not private:
                    continue
                owner = ".".join(parts[: private[0]])
                # _internal and _core are shared by design; inside one package its private modules are its own
                if (
                    parts[private[0]] in ("_internal", "_core")
                    or owner == own
                    or owner.startswith(own + ".")
                    or own.startswith(owner + ".")
                ):
                    continue
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {full}")
    assert not bad, "\n".join(bad)


def test_modules_import_only_core_and_version_from_the_root():
    bad = []
    for path in _modules():
        if path == PACKAGE / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and _absolute(path, node) == "llmdbg":
                extra = {a.name for a in node.names} - {"_core", "__version__", "plot"}
                if extra:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {sorted(extra)} from llmdbg")
    assert not bad, "\n".join(bad)


def test_no_module_over_the_size_limit_without_a_reason():
    long = []
    for path in _modules():
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES and not any(line.startswith("# Long because:") for line in lines[:40]):
            long.append(f"{path.relative_to(ROOT)} ({len(lines)} lines)")
    assert not long, "modules over ~500 lines need '# Long because: ...' near the top: " + ", ".join(long)


def test_no_public_name_shadows_a_module_of_the_same_package():
    shadowed = []
    for init in PACKAGE.rglob("__init__.py"):
        pkg = "llmdbg" + "".join("." + p for p in init.parent.relative_to(PACKAGE).parts)
        module = importlib.import_module(pkg)
        for sub in init.parent.glob("*.py"):
            name = sub.stem
            if (
                name != "__init__"
                and hasattr(module, name)
                and not hasattr(getattr(module, name), "__path__")
                and getattr(getattr(module, name), "__name__", None) != f"{pkg}.{name}"
            ):
                shadowed.append(f"{pkg}.{name}")
    assert not shadowed, f"these names hide modules of the same name: {shadowed}"


def test_every_public_result_type_is_exported():
    for name in (
        "PatchResult",
        "HeadImportance",
        "AblationResult",
        "Relevance",
        "CheckReport",
        "DataProfile",
        "StreamingRollout",
        "AttentionSummary",
        "LensResult",
        "Attribution",
        "EmbeddingMap",
        "ClassificationReport",
        "ErrorAnalysis",
        "Event",
        "Unembedding",
    ):
        assert name in llmdbg.__all__ and isinstance(getattr(llmdbg, name), type), name
    assert all(hasattr(llmdbg, name) for name in llmdbg.__all__)


@pytest.mark.parametrize(
    ("old", "attr", "new"),
    [
        ("llmdbg.models", "find_layout", "llmdbg.adapters.layout"),
        ("llmdbg.models", "eager_attention", "llmdbg.adapters.attention_impl"),
        ("llmdbg.unembed", "find_unembedding", "llmdbg.adapters.unembedding"),
        ("llmdbg.trace", "Trace", "llmdbg.tracing.trace"),
        ("llmdbg.stats", "summarize", "llmdbg.tracing.stats"),
        ("llmdbg.report_job", "run_report", "llmdbg.report.job"),
        ("llmdbg.report_job", "ReportContext", "llmdbg.report.context"),
        ("llmdbg.report_inputs", "load_model", "llmdbg.report.inputs"),
    ],
)
def test_old_module_paths_still_import_with_a_deprecation_warning(old, attr, new):
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{re.escape(old)} moved to"):
        module = importlib.import_module(old)
    assert getattr(module, attr) is getattr(importlib.import_module(new), attr)
    with pytest.raises(AttributeError, match="moved to"):
        module.no_such_name  # noqa: B018


def test_functions_named_like_old_modules_stay_functions():
    for old in ("llmdbg.capture", "llmdbg.data.profile", "llmdbg.training.watch"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)
    assert callable(llmdbg.capture) and callable(llmdbg.data.profile) and callable(llmdbg.training.watch)


def test_demo_and_streaming_rollout_names():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from llmdbg.demo import DEFAULT_TEXTS, load_minilm  # the short public path does not warn

    assert callable(load_minilm) and DEFAULT_TEXTS
    with pytest.warns(DeprecationWarning, match="use llmdbg.streaming_rollout"):
        assert llmdbg.rollout is llmdbg.streaming_rollout
    import llmdbg.attention.rollout as rollout_module  # the module is no longer hidden by a function

    assert rollout_module.attention_rollout is llmdbg.attention_rollout
