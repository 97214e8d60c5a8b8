"""``show(obj)``: the interactive view for any llmdbg result that has one (dispatch by type).

The module is not named ``show.py``: the package exports the function ``show``, which would hide it."""

from __future__ import annotations

from typing import Any

from ._base import View

# Class name -> builder module. Matched on the class names along the object's
# MRO, so the features stay unimported until a view of theirs is asked for.
_BUILDERS: dict[str, str] = {
    "Trace": "attention",
    "AttentionSummary": "attention",
    "Attribution": "attribution",
    "GenerationAttribution": "attribution",
    "LensResult": "lens",
    "EmbeddingMap": "embedding",
    "Watch": "training",
    "WatchHistory": "training",
}


def _builder(obj: Any) -> Any:
    for klass in type(obj).__mro__:
        module = _BUILDERS.get(klass.__name__)
        if module is not None and klass.__module__.startswith("llmdbg."):
            if module == "attention":
                from .attention import attention_view

                return attention_view
            if module == "attribution":
                from .attribution import attribution_view

                return attribution_view
            if module == "lens":
                from .lens import lens_view

                return lens_view
            if module == "embedding":
                from .embedding import embedding_view

                return embedding_view
            from .training import training_view

            return training_view
    return None


def show(obj: Any, **opts: Any) -> View:
    """The interactive view of ``obj``; in Jupyter it displays itself.

    Parameters
    ----------
    obj : Trace, AttentionSummary, Attribution, GenerationAttribution, LensResult, EmbeddingMap, Watch or WatchHistory
        - ``Trace`` (with attentions or attention statistics) and ``AttentionSummary``: the
          attention view (:func:`llmdbg.widgets.attention_view`);
        - ``Attribution`` and ``GenerationAttribution``: the attribution view;
        - ``LensResult``: the logit-lens view;
        - ``EmbeddingMap``: the embedding scatter;
        - ``Watch`` and ``WatchHistory``: the training curves with their events.
    **opts
        Passed to the view's builder (e.g. ``layers=``, ``heads=``, ``max_bytes=``).

    Returns
    -------
    View
        Displays as a widget in Jupyter, as HTML elsewhere; ``.save(path)`` writes a page.
    """
    builder = _builder(obj)
    if builder is None:
        names = ", ".join(sorted(_BUILDERS))
        raise TypeError(f"show() has a view for {names}; got {type(obj).__module__}.{type(obj).__qualname__}")
    return builder(obj, **opts)
