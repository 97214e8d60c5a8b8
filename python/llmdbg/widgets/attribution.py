"""The attribution view: the input tokens coloured by their score (red raises the target, blue
lowers it), a bar per token on canvas, hover for the score under every method given; for
generated text (a :class:`~llmdbg.GenerationAttribution`, or a continuation), click a generated
token to show its attribution over the source.

Several results on the same tokens (e.g. saliency and integrated gradients of one input) make
one view: the first colours the tokens, buttons switch, and the hover lists each method's score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._base import View
from ._payload import check_size, encode_array, encoded_size


def _as_methods(obj: Any) -> list[tuple[str, Any]]:
    from ..attribution import Attribution, GenerationAttribution

    kinds = (Attribution, GenerationAttribution)
    if isinstance(obj, kinds):
        return [(obj.method, obj)]
    if isinstance(obj, Mapping):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, Sequence) and not isinstance(obj, str):
        items = [(getattr(v, "method", str(i)), v) for i, v in enumerate(obj)]
    else:
        raise TypeError(
            "attribution_view takes an Attribution, a GenerationAttribution, or a list or dict of them "
            f"on the same tokens; got {type(obj).__name__}"
        )
    if not items:
        raise ValueError("attribution_view needs at least one attribution result")
    for name, v in items:
        if not isinstance(v, kinds):
            raise TypeError(f"{name!r} is a {type(v).__name__}, not an Attribution or GenerationAttribution")
    if len({type(v) for _, v in items}) > 1:
        raise TypeError("mix of Attribution and GenerationAttribution: give results of one kind")
    names = [n for n, _ in items]
    # the same method twice (e.g. two baselines) gets a number
    return [(n if names.count(n) == 1 else f"{n} #{i}", v) for i, (n, v) in enumerate(items)]


def _generation(items: list[tuple[str, Any]]) -> dict[str, Any]:
    first = items[0][1]
    for name, g in items[1:]:
        if g.source_tokens != first.source_tokens or g.target_tokens != first.target_tokens:
            raise ValueError(f"{name!r} attributes other tokens than {items[0][0]!r}: one view needs the same tokens")
    n, s = first.scores.shape
    p = int(first.prompt_length)
    visible = np.zeros((n, s), np.uint8)
    for k in range(n):
        visible[k, : min(s, p + k)] = 1
    steps = {k: [float(x) for x in np.asarray(v, np.float64)] for k, v in first.step_scores.items()}
    return {
        "generation": True,
        "sources": [str(t) for t in first.source_tokens],
        "targets": [str(t) for t in first.target_tokens],
        "prompt_length": p,
        "visible": encode_array(visible, "uint8"),
        "methods": [{"name": name, "scores": encode_array(g.scores.astype(np.float32))} for name, g in items],
        "step_scores": {k: [x if np.isfinite(x) else None for x in v] for k, v in steps.items()},
        "source_kind": first.source,
    }


def _attribution(items: list[tuple[str, Any]], index: int) -> dict[str, Any]:
    first = items[0][1]
    b = len(first.tokens)
    if not 0 <= index < b:
        raise ValueError(f"index must be in [0, {b}) (the examples of this attribution), got {index}")
    for name, a in items[1:]:
        if len(a.tokens) <= index or a.tokens[index] != first.tokens[index]:
            raise ValueError(f"{name!r} attributes other tokens than {items[0][0]!r}: one view needs the same tokens")
    tokens = [str(t) for t in first.tokens[index]]
    mask = np.asarray(first.mask[index], bool)
    methods = []
    for name, a in items:
        s = np.asarray(a.scores[index], np.float32)
        if s.ndim == (3 if a.per_target else 2):  # reduce="none": the embedding axis summed, as token_scores does
            s = s.sum(-1)
        methods.append({"name": name, "scores": encode_array(s if a.per_target else s[None])})
    n_targets = int(np.asarray(first.scores[index]).shape[0]) if first.per_target else 1
    targets = first.target_tokens[index] if first.target_tokens is not None else None
    if targets is not None:
        targets = [str(t) for t in targets[:n_targets]]
    return {
        "generation": bool(first.per_target),
        "sources": tokens,
        "targets": targets,
        "prompt_length": None,
        "visible": encode_array(np.broadcast_to(mask, (n_targets, len(mask))), "uint8"),
        "methods": methods,
    }


def attribution_view(
    obj: Any,
    *,
    index: int = 0,
    max_bytes: int | None = None,
    title: str = "Attribution",
) -> View:
    """The interactive view of token attributions.

    Parameters
    ----------
    obj : Attribution, GenerationAttribution, or a list or dict of them
        One result, or several on the same tokens (``{"saliency": a, "IG": b}``; a list is named
        by each result's ``method``). ``Attribution`` scores ``(B, T)`` show example ``index``;
        a continuation's ``(B, T_out, T)`` and a ``GenerationAttribution``'s ``(n, S)`` show one
        row at a time: click a generated token to pick it (sources a step cannot see are greyed).
    index : int
        The example of an ``Attribution`` batch.
    max_bytes : int, optional
        Payload limit (default 64 MiB); the scores travel as float32.
    title : str
        Heading of the view.

    Returns
    -------
    View
    """
    items = _as_methods(obj)
    from ..attribution import GenerationAttribution

    if isinstance(items[0][1], GenerationAttribution):
        shape = items[0][1].scores.shape
    else:
        shape = np.asarray(items[0][1].scores[0]).shape
    check_size(
        len(items) * encoded_size(shape, "float32"),
        f"scores of {len(items)} method(s), {shape} each",
        "fewer methods or a shorter text (a sample of the targets)",
        max_bytes,
    )
    payload = _generation(items) if isinstance(items[0][1], GenerationAttribution) else _attribution(items, index)
    return View("attribution", payload, title=title, max_bytes=max_bytes, instead="fewer methods or targets")
