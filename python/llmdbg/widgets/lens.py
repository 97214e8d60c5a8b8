"""The logit-lens view: the layer × position table of top tokens of a
:class:`~llmdbg.LensResult`, each cell shaded by its probability; hover a cell for its top-k
tokens and probabilities (and the target's rank and probability when tracked)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._base import View
from ._payload import check_size, encode_array, encoded_size


def _positions(positions: Any, t: int) -> list[int]:
    if positions is None:
        return list(range(t))
    out = []
    for p in positions:
        if not isinstance(p, (int, np.integer)) or isinstance(p, bool):
            raise TypeError(f"positions must be integers, got {p!r}")
        if not -t <= int(p) < t:
            raise ValueError(f"positions must be in [-{t}, {t}), got {p}")
        out.append(int(p) % t)
    return out


def lens_view(
    obj: Any,
    *,
    batch: int = 0,
    positions: Sequence[int] | None = None,
    max_bytes: int | None = None,
    title: str = "Logit lens",
) -> View:
    """The interactive logit-lens table of one sequence.

    Parameters
    ----------
    obj : LensResult
        From :func:`llmdbg.logit_lens`: ``top_ids``/``top_probs`` ``(R, B, T, k)``, optional
        ``top_tokens``, ``target_rank``/``target_prob`` ``(R, B, T)``.
    batch : int
        Which sequence to show.
    positions : sequence of int, optional
        Columns to show (default all positions, padding included and marked).
    max_bytes : int, optional
        Payload limit (default 64 MiB).
    title : str
        Heading of the view.

    Returns
    -------
    View
        Top tokens travel as a table of distinct strings plus ``uint32`` indices ``(R, P, k)``,
        probabilities as ``float32``.
    """
    from ..lens import LensResult

    if not isinstance(obj, LensResult):
        raise TypeError(f"lens_view takes a LensResult (from llmdbg.logit_lens), got {type(obj).__name__}")
    r, b, t, k = obj.top_ids.shape
    if not 0 <= batch < b:
        raise ValueError(f"batch must be in [0, {b}), got {batch}")
    cols = _positions(positions, t)
    if r == 0 or not cols or k == 0:
        payload: dict[str, Any] = {"empty": "This logit-lens result has no layers or positions to show."}
        return View("lens", payload, title=title, max_bytes=max_bytes)
    check_size(
        encoded_size((r, len(cols), k), "float32") * 2 + encoded_size((r, len(cols)), "float32") * 2,
        f"top-{k} predictions of {r} layers x {len(cols)} positions",
        "positions=range(a, b) or a smaller top_k",
        max_bytes,
    )
    ids = obj.top_ids[:, batch][:, cols]  # (R, P, k)
    if obj.top_tokens is not None:
        strings = np.asarray(obj.top_tokens[:, batch][:, cols]).astype(str)
    else:
        strings = ids.astype(str)
    table, index = np.unique(strings.ravel(), return_inverse=True)
    inputs = obj.input_tokens[batch] if obj.input_tokens is not None else None
    mask = np.asarray(obj.attention_mask)[batch] if obj.attention_mask is not None else np.ones(t, bool)
    payload = {
        "layers": [int(x) for x in obj.layers],
        "positions": cols,
        "input_tokens": None if inputs is None else [str(inputs[c]) for c in cols],
        "real": [bool(mask[c]) for c in cols],
        "strings": [str(s) for s in table],
        "top": encode_array(index.reshape(ids.shape).astype(np.uint32), "uint32"),
        "top_ids": encode_array(ids.astype(np.int32), "int32"),
        "probs": encode_array(obj.top_probs[:, batch][:, cols].astype(np.float32)),
        "kind": obj.kind,
    }
    if obj.target_prob is not None and obj.target_rank is not None:
        payload["target_prob"] = encode_array(obj.target_prob[:, batch][:, cols].astype(np.float32))
        payload["target_rank"] = encode_array(obj.target_rank[:, batch][:, cols].astype(np.int32), "int32")
    return View("lens", payload, title=title, max_bytes=max_bytes, instead="positions= or a smaller top_k")
