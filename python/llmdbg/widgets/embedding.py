"""The embedding view: a canvas scatter of an :class:`~llmdbg.EmbeddingMap` (hundreds of thousands of
points), with hover labels, search, colouring by label, cluster or layer, zoom and pan.

The coordinates travel as one float32 buffer, the labels as a table of distinct strings with a
uint32 index per point, and each colouring as its category names with an index per point: 200,000
token labels cost about 4.3 MB of payload instead of the tens of MB of a JSON list of objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._base import View
from ._payload import check_size, encode_array, encoded_size

__all__ = ["embedding_view"]

#: Distinct categories a colouring may have (more would repeat the palette to no use).
MAX_CATEGORIES = 100_000


def _categories(values: Sequence[Any], n: int, what: str) -> tuple[list[str], np.ndarray]:
    """(distinct values as strings in first-seen order, (n,) uint32 index of each point)."""
    if isinstance(values, str):
        raise TypeError(f"{what}: expected one value per point, got a single string")
    vals = list(values.tolist() if hasattr(values, "tolist") else values)
    if len(vals) != n:
        raise ValueError(f"{what}: expected {n} values (one per point), got {len(vals)}")
    index = np.empty(n, dtype=np.uint32)
    if vals and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in vals):
        # numbers (cluster ids, layers): categories in numeric order, so the legend reads 0, 1, 2 ...
        distinct, inverse = np.unique(np.asarray(vals, dtype=np.float64), return_inverse=True)
        names = [str(int(d)) if float(d).is_integer() else repr(float(d)) for d in distinct]
        return names, inverse.astype(np.uint32).reshape(n)
    table: dict[str, int] = {}
    for i, v in enumerate(vals):
        index[i] = table.setdefault(str(v), len(table))
    return list(table), index


def _coords_and_labels(obj: Any, labels: Sequence[Any] | None) -> tuple[np.ndarray, list[Any], str]:
    """The (N, 2) float32 coordinates and N labels of an EmbeddingMap or of a plain array."""
    if hasattr(obj, "coords") and hasattr(obj, "labels"):
        coords, default, info = obj.coords, obj.labels, getattr(obj, "info", {}) or {}
        what = str(info.get("source", "")) if isinstance(info, Mapping) else ""
    else:
        coords, default, what = obj, None, ""
    if hasattr(coords, "detach"):
        coords = coords.detach().cpu().numpy()
    arr = np.asarray(coords)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or arr.ndim != 2 or arr.shape[1] != 2:
        raise TypeError(
            f"embedding_view: expected an EmbeddingMap or an (N, 2) array of coordinates, got "
            f"{type(obj).__name__} with shape {getattr(arr, 'shape', None)}"
        )
    if labels is None:
        labels = default if default is not None else [str(i) for i in range(len(arr))]
    if not np.isfinite(arr).all():
        raise ValueError("coords: the map has NaN or infinite coordinates; drop those points first")
    return np.ascontiguousarray(arr, dtype=np.float32), list(labels), what


def embedding_view(
    obj: Any,
    *,
    labels: Sequence[Any] | None = None,
    color_by: Mapping[str, Sequence[Any]] | None = None,
    clusters: Sequence[Any] | None = None,
    layers: Sequence[Any] | None = None,
    sample: int | None = None,
    random_state: int | None = 0,
    width: int = 720,
    height: int = 480,
    title: str = "",
    max_bytes: int | None = None,
) -> View:
    """Interactive scatter of an embedding map: hover, search, colour, zoom and pan.

    Drawn on a 2-D canvas straight into pixel memory, so 200,000 points paint in well under a
    second. Hover shows the nearest point's label (a grid index over the points finds it), the
    search box highlights every point whose label contains the text (case-insensitive), the
    *colour* menu switches between the colourings, the wheel zooms around the cursor and a drag
    pans; *reset view* fits the map again.

    Parameters
    ----------
    obj : EmbeddingMap or array_like of shape (N, 2)
        The map (:func:`llmdbg.embed_tokens`, :func:`llmdbg.embed_hidden_states`) or plain
        coordinates.
    labels : sequence of length N, optional
        Hover and search text per point (default: the map's labels, or the point's index).
    color_by : mapping of str to sequence of length N, optional
        Extra colourings by name, each one category per point (e.g. ``{"class": y}``). The
        labels themselves are offered as the ``"label"`` colouring after these, unless one of
        these is named ``"label"``.
    clusters, layers : sequence of length N, optional
        Shorthands for ``color_by={"cluster": clusters}`` and ``{"layer": layers}``.
    sample : int, optional
        Show a seeded random sample of this many points (``random_state`` seeds it), for maps
        whose payload would be over the limit.
    random_state : int or None
        Seed of ``sample``.
    width, height : int
        Canvas size in CSS pixels.
    title : str
        Heading above the view.
    max_bytes : int, optional
        Payload limit (:data:`llmdbg.widgets.MAX_PAYLOAD_BYTES`, 64 MiB, when None).

    Returns
    -------
    View
        Named ``"embedding"``; displays itself in Jupyter, ``.save(path)`` writes a page.

    Raises
    ------
    PayloadTooLargeError
        The payload would be over ``max_bytes``; the message suggests ``sample=``.

    Examples
    --------
    >>> m = llmdbg.embed_tokens(model, tok, max_tokens=2000)
    >>> llmdbg.widgets.embedding_view(m, clusters=kmeans_labels)   # doctest: +SKIP
    """
    coords, point_labels, source = _coords_and_labels(obj, labels)
    n = total = len(coords)
    if len(point_labels) != n:
        raise ValueError(f"labels: expected {n} labels (one per point), got {len(point_labels)}")
    colorings: dict[str, list[Any]] = {}
    named = {**dict(color_by or {}), **({"cluster": clusters} if clusters is not None else {})}
    named.update({"layer": layers} if layers is not None else {})
    for name, values in named.items():
        if isinstance(values, str) or not hasattr(values, "__len__") or len(values) != n:
            got = (
                "a string" if isinstance(values, str) else f"{len(values) if hasattr(values, '__len__') else values!r}"
            )
            raise ValueError(f"color_by[{name!r}]: expected {n} values (one per point), got {got}")
        colorings[str(name)] = list(values.tolist() if hasattr(values, "tolist") else values)

    if sample is not None:
        if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
            raise ValueError(f"sample: expected a positive int, got {sample!r}")
        if sample < n:
            keep = np.sort(np.random.default_rng(random_state).choice(n, int(sample), replace=False))
            coords = coords[keep]
            point_labels = [point_labels[i] for i in keep]
            colorings = {k: [v[i] for i in keep] for k, v in colorings.items()}
            n = len(keep)

    # Refuse before the string tables are built: coordinates and indices dominate the size.
    instead = f"sample={max(1, n // 4):,} (a random sample of the points)"
    estimate = encoded_size((n, 2), "float32") + encoded_size((n,), "uint32") * (1 + len(colorings))
    check_size(estimate, f"an embedding map of {n:,} points", instead, max_bytes)

    strings, label_index = _categories(point_labels, n, "labels")
    options: list[dict[str, Any]] = []
    for name, values in colorings.items():
        names, index = _categories(values, n, f"color_by[{name!r}]")
        if len(names) > MAX_CATEGORIES:
            raise ValueError(f"color_by[{name!r}]: {len(names):,} distinct values; at most {MAX_CATEGORIES:,}")
        options.append({"name": name, "names": names, "index": encode_array(index, "uint32")})
    # The labels' own colouring reuses their index (no second buffer). With every label distinct
    # (a vocabulary) it only repeats the palette, so it comes after the named colourings; a
    # colouring of yours named "label" (a dataset's labels) takes its place.
    if "label" not in colorings:
        options.append({"name": "label", "labels": True})

    payload: dict[str, Any] = {
        "n": n,
        "total": total,
        "coords": encode_array(coords, "float32"),
        "labels": {"strings": strings, "index": encode_array(label_index, "uint32")},
        "colorings": options,
        "width": int(width),
        "height": int(height),
        "source": source,
    }
    if n == 0:
        payload["empty"] = "No points to show: the map is empty."
    return View("embedding", payload, title=title, max_bytes=max_bytes, instead=instead)
