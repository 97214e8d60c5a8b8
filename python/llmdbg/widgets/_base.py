"""The one object every view builder returns: :class:`View`.

A view is a name (``"attention"``, ``"lens"``, ...), a JSON payload (see ``_payload``) and the
JavaScript that draws it: ``_static/common.js`` followed by ``_static/<name>.js`` and
``export default { render };``. No import between files, no build step, nothing fetched: the same
text is the ``_esm`` of an anywidget in Jupyter and an inline ``<script type="module">`` in a page,
where a small shim stands in for the widget model (``get``, ``set``, ``on``, ``off``,
``save_changes``) and reads the payload from a ``<script type="application/json">`` next to it.
"""

from __future__ import annotations

import secrets
from functools import cache
from pathlib import Path
from typing import Any

from .._internal.html import esc
from ._payload import encode_payload

_STATIC = Path(__file__).with_name("_static")

# The page stands in for the widget model: payload and view name from the JSON block, change
# listeners for set(), and render() given the view's own root element.
_SHIM = """
{
  const root = document.getElementById(%(id)s);
  const store = { _view: %(name)s, _payload: document.getElementById(%(id)s + "-payload").textContent };
  const listeners = {};
  const model = {
    get: (key) => store[key],
    set: (key, value) => {
      const old = store[key];
      store[key] = value;
      for (const cb of listeners["change:" + key] || []) cb({ name: key, old, new: value });
    },
    on: (event, cb) => { (listeners[event] = listeners[event] || []).push(cb); },
    off: (event, cb) => {
      if (!event) { for (const k in listeners) delete listeners[k]; return; }
      listeners[event] = cb ? (listeners[event] || []).filter((f) => f !== cb) : [];
    },
    save_changes: () => {},
    send: () => {},
  };
  try {
    render({ model, el: root });
  } catch (err) {
    const box = document.createElement("div");
    box.className = "llmdbg-empty llmdbg-error";
    box.textContent = "This view could not be drawn: " + err;
    root.appendChild(box);
    throw err;
  }
}
"""


@cache
def _read_static(name: str) -> str:
    path = _STATIC / name
    if not path.is_file():
        raise ValueError(f"no JavaScript for a view named {name.removesuffix('.js')!r} ({path} is missing)")
    text = path.read_text(encoding="utf-8")
    lowered = text.lower()
    if "</script" in lowered or "<!--" in lowered:  # would end or hide the inline <script> of to_html()
        raise ValueError(f"{path.name} holds '</script' or '<!--'; write them as '<\\/script' and '<\\!--' in strings")
    return text


def view_esm(name: str) -> str:
    """The ES module of view ``name``: ``common.js`` + ``<name>.js`` + ``export default { render };``."""
    return _read_static("common.js") + "\n" + _read_static(f"{name}.js") + "\nexport default { render };\n"


def _js_string(text: str) -> str:
    import json

    return json.dumps(text).replace("<", "\\u003c")


class View:
    """One interactive view of an llmdbg object.

    Parameters
    ----------
    name : str
        The view's name; its drawing code is ``widgets/_static/<name>.js``.
    payload : dict
        The data, with arrays already encoded (``encode_array``); ``title`` is added under
        ``"title"`` unless the payload has one.
    title : str
        A heading the view shows above its content.
    max_bytes : int, optional
        Payload size limit (``MAX_PAYLOAD_BYTES`` when ``None``).
    instead : str
        What the size error suggests selecting instead.

    Attributes
    ----------
    name : str
    title : str
    payload_json : str
        The payload as HTML-safe JSON (what the JavaScript reads with ``model.get("_payload")``).

    Notes
    -----
    In Jupyter the view displays as an anywidget (when ``anywidget`` is installed), elsewhere as the
    HTML of :meth:`to_html`, which runs in any renderer that runs scripts; ``text/plain`` always
    says what it is.
    """

    def __init__(
        self,
        name: str,
        payload: dict[str, Any],
        *,
        title: str = "",
        max_bytes: int | None = None,
        instead: str = "fewer items",
    ) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"name must be a view name such as 'attention', got {name!r}")
        _read_static(f"{name}.js")  # an unknown view fails here, not in the browser
        self.name = name
        self.title = str(title)
        body = dict(payload)
        if self.title and "title" not in body:
            body["title"] = self.title
        self.payload_json = encode_payload(body, max_bytes=max_bytes, instead=instead)

    @property
    def esm(self) -> str:
        """The view's JavaScript as one ES module (what the widget's ``_esm`` holds)."""
        return view_esm(self.name)

    def __repr__(self) -> str:
        size = len(self.payload_json.encode("utf-8"))
        label = f" {self.title!r}" if self.title else ""
        return f"<llmdbg {self.name} view{label}, payload {size / 1024:.1f} KiB>"

    def to_html(self) -> str:
        """A self-contained HTML fragment: the root ``div``, the payload and the module script.

        Each call gets fresh element ids, so any number of views (even the same one twice) can
        share a page.
        """
        uid = f"llmdbg-{self.name}-{secrets.token_hex(6)}"
        shim = _SHIM % {"id": _js_string(uid), "name": _js_string(self.name)}
        return (
            f'<div class="llmdbg-view" data-llmdbg-view="{esc(self.name)}" id="{uid}">'
            f'<noscript><div class="llmdbg-empty">This interactive view needs JavaScript.</div></noscript>'
            f"</div>\n"
            f'<script type="application/json" id="{uid}-payload">{self.payload_json}</script>\n'
            f'<script type="module">\n{self.esm}\n{shim}</script>\n'
        )

    def save(self, path: str | Path) -> Path:
        """Write a standalone HTML page with this view; returns the path written."""
        out = Path(path)
        title = esc(self.title or f"llmdbg {self.name} view")
        out.write_text(
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>\n'
            f'<body style="margin: 16px;">\n{self.to_html()}</body></html>\n',
            encoding="utf-8",
        )
        return out

    def widget(self) -> Any:
        """An ``anywidget.AnyWidget`` showing this view (needs the ``widgets`` extra: anywidget)."""
        cls = _widget_class()
        return cls(_esm=self.esm, _view=self.name, _payload=self.payload_json)

    def _repr_html_(self) -> str:
        return self.to_html()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        plain = repr(self)
        try:
            widget = self.widget()
        except ImportError:
            return {"text/html": self.to_html(), "text/plain": plain}
        bundle = widget._repr_mimebundle_()
        data = dict(bundle[0] if isinstance(bundle, tuple) else bundle or {})
        data["text/plain"] = plain
        return data


@cache
def _widget_class() -> type:
    try:
        import anywidget
        import traitlets
    except ImportError as err:
        raise ImportError(
            "llmdbg's interactive widgets need anywidget: pip install anywidget (or the llmdbg[widgets] extra)"
        ) from err

    class ViewWidget(anywidget.AnyWidget):
        """An llmdbg view as a Jupyter widget: ``_view`` names it, ``_payload`` holds its JSON."""

        _esm = traitlets.Unicode("").tag(sync=True)
        _view = traitlets.Unicode("").tag(sync=True)
        _payload = traitlets.Unicode("{}").tag(sync=True)

    ViewWidget.__module__ = __name__
    return ViewWidget
