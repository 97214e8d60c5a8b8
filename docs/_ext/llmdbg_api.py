"""Sphinx extension: the API reference, from ``llmdbg.__all__`` and the public modules' ``__all__``.

The line ``<!-- llmdbg-api -->`` in a page becomes a summary table and one autodoc entry per
public name: first every name in ``llmdbg.__all__`` (documented as ``llmdbg.<name>``), then, per
public module or subpackage of llmdbg (``llmdbg.plot``, ``llmdbg.report``, ...), the names in its
``__all__`` that are not already top-level exports. A name added to an ``__all__`` therefore
appears in the reference without editing any page.
"""

from __future__ import annotations

import importlib
import inspect
import logging as logging_std
import pkgutil
import pprint
import re
from pathlib import Path
from typing import Any

from sphinx.util import logging

logger = logging.getLogger(__name__)

MARKER = "<!-- llmdbg-api -->"
# Modules users do not call directly (the command line is documented by ``llmdbg --help``).
SKIP_MODULES = {"cli"}


def _get(module: Any, name: str) -> Any:
    """``module.name``, importing it when ``__all__`` names a submodule that is not loaded yet."""
    try:
        return getattr(module, name)
    except AttributeError:
        return importlib.import_module(f"{module.__name__}.{name}")


def _directive(obj: Any) -> tuple[str, str]:
    """(autodoc directive, options) for one object."""
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "autoexception", ""
        return "autoclass", "   :members:\n"
    if inspect.isroutine(obj):
        return "autofunction", ""
    if inspect.ismodule(obj):
        return "automodule", "   :members:\n"
    return "autodata", "   :no-value:\n"


def _is_data(obj: Any) -> bool:
    return not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj))


def _data_entry(dotted: str, obj: Any) -> str:
    """A constant (tuple, dict, ...): its type and value. (autodoc would show the docstring of
    the value's type, e.g. ``dict.__doc__``, for a constant without a ``#:`` comment.)"""
    value = pprint.pformat(obj, width=90, compact=True).splitlines()
    if len(value) > 40:
        value = value[:40] + ["..."]
    body = "\n".join(f"      {line}" for line in value)
    return (
        f"```{{eval-rst}}\n.. py:data:: {dotted}\n   :type: {type(obj).__name__}\n\n"
        f"   Value:\n\n   .. code-block:: python\n\n{body}\n```\n"
    )


# Docstrings are reStructuredText (numpydoc), so autodoc runs inside eval-rst blocks.
def _entries(module: Any, names: list[str]) -> list[str]:
    out = []
    for name in names:
        obj = _get(module, name)
        if _is_data(obj):
            out.append(_data_entry(f"{module.__name__}.{name}", obj))
            continue
        kind, options = _directive(obj)
        if inspect.ismodule(obj):  # members also exported beside the module are documented there
            twice = [m for m in getattr(obj, "__all__", []) if m in names and _get(module, m) is _get(obj, m)]
            if twice:
                options += f"   :exclude-members: {', '.join(twice)}\n"
        out.append(f"```{{eval-rst}}\n.. {kind}:: {module.__name__}.{name}\n{options}```\n")
    return out


def _summary(module: Any, names: list[str]) -> str:
    names = [n for n in names if not _is_data(_get(module, n))]
    if not names:
        return ""
    body = "\n".join(f"   {module.__name__}.{n}" for n in names)
    return f"```{{eval-rst}}\n.. autosummary::\n   :nosignatures:\n\n{body}\n```\n"


def escape_pipes(lines: list[str]) -> None:
    """Docstrings write absolute values as ``|x|``, which reStructuredText reads as an (undefined)
    substitution. llmdbg's docstrings never use substitutions, so escape the bars outside literals
    and grid tables."""
    for i, line in enumerate(lines):
        text = line.strip()
        grid = text.startswith("+") and set(text) <= set("+-=| ")
        if "|" not in line or grid or (text.startswith("| ") and text.endswith(" |")):
            continue
        parts = re.split(r"(``.*?``|`[^`]*`)", line)  # leave inline literals and roles alone
        lines[i] = "".join(p if p.startswith("`") else re.sub(r"(?<!\\)\|", r"\\|", p) for p in parts)


class LenientDocstrings(logging_std.Filter):
    """Keep warnings raised by the docstrings of modules still being written (the config value
    ``llmdbg_lenient_modules``) from failing a ``-W`` build: they are recorded, listed at the end
    of the build and written to ``docstring-problems.txt``. Every other warning passes through."""

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app
        self.caught: list[str] = []

    def filter(self, record: logging_std.LogRecord) -> bool:
        if record.levelno < logging_std.WARNING:
            return True
        where = str(getattr(record, "location", "") or "")
        mods = self.app.config.llmdbg_lenient_modules
        if any(f"docstring of {m}." in where or f"docstring of {m}:" in where for m in mods):
            self.caught.append(f"{where}: {record.getMessage()}")
            return False
        return True


def _install_filter(app: Any) -> None:
    filt = LenientDocstrings(app)
    app.llmdbg_lenient_filter = filt
    for handler in logging_std.getLogger("sphinx").handlers:
        if type(handler).__name__ == "WarningStreamHandler":
            handler.filters.insert(0, filt)  # before Sphinx counts (or raises on) the warning


def _process_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if name.startswith("llmdbg"):
        escape_pipes(lines)


def _report_problems(app: Any, exc: Any) -> None:
    filt = getattr(app, "llmdbg_lenient_filter", None)
    out = Path(app.outdir) / "docstring-problems.txt"
    if filt is None or not filt.caught:
        out.unlink(missing_ok=True)
        return
    text = "".join(f"{line}\n" for line in dict.fromkeys(filt.caught))
    out.write_text(text, encoding="utf-8")
    logger.info(
        "\nnot counted as warnings (docstrings of modules in llmdbg_lenient_modules, still "
        "being written; also in %s):\n%s",
        out,
        text,
    )


def _markdown_inline(text: str) -> str:
    """A docstring sentence (reStructuredText) as Markdown: roles and ``literals`` become code."""
    text = re.sub(r":[\w:.-]+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _public_modules(package: Any) -> list[Any]:
    mods = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in SKIP_MODULES:
            continue
        name = f"{package.__name__}.{info.name}"
        try:
            mods.append(importlib.import_module(name))
        except Exception as exc:
            logger.warning(
                "API reference: cannot import %s (%s: %s)",
                name,
                type(exc).__name__,
                exc,
                type="llmdbg",
                subtype="api_import",
            )
    if package.__name__ == "llmdbg":  # public by name, served from report/ (see _internal/moved.py)
        mods.append(importlib.import_module("llmdbg.report.demo"))
    return mods


def render() -> str:
    """The Markdown that replaces :data:`MARKER`."""
    import llmdbg

    top = list(llmdbg.__all__)
    seen = {id(getattr(llmdbg, n)) for n in top if not isinstance(getattr(llmdbg, n), (str, int, float))}
    for n in top:  # a module exported at the top level is documented there with its members
        obj = getattr(llmdbg, n)
        if inspect.ismodule(obj):
            seen.update(id(_get(obj, m)) for m in getattr(obj, "__all__", []))
    out = [
        "## Top level\n",
        "Everything below is importable as `llmdbg.<name>`.\n",
        _summary(llmdbg, top),
        *_entries(llmdbg, top),
    ]
    for mod in _public_modules(llmdbg):
        if id(mod) in seen:
            continue
        names = [n for n in getattr(mod, "__all__", []) if id(_get(mod, n)) not in seen]
        if not names:
            continue
        short = mod.__name__
        doc = _markdown_inline((inspect.getdoc(mod) or "").strip().split("\n\n")[0].replace("\n", " "))
        out += [f"## `{short}`\n", f"{doc}\n" if doc else "", _summary(mod, names), *_entries(mod, names)]
        seen.update(id(_get(mod, n)) for n in names)
    return "\n".join(out)


def _source_read(app: Any, docname: str, source: list[str]) -> None:
    if MARKER in source[0]:
        source[0] = source[0].replace(MARKER, render())


def _outdated(app: Any, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    # The reference depends on Python sources, not on its page: always re-read it.
    return [d for d in env.found_docs if d == "api"]


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _source_read)
    app.connect("env-get-outdated", _outdated)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("build-finished", _report_problems)
    app.add_config_value("llmdbg_lenient_modules", [], "env")
    _install_filter(app)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
