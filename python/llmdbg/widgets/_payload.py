"""Payloads of the interactive views: arrays as base64 buffers inside one JSON document.

A view's data travels as one JSON string (a widget trait, or a ``<script type="application/json">``
block in a page). Numbers in bulk never travel as JSON lists: each array leaf is
``{"dtype", "shape", "b64"}``, the base64 of its C-contiguous little-endian bytes, which the
JavaScript side (``common.js``: ``decodeArray``) turns back into a typed array without parsing a
float at a time. Large non-negative maps (attention rows) can go as ``uint8`` with one scale per
row (:func:`quantize_rows`), four times smaller than ``float32``.

The JSON is made safe to embed in HTML: every ``<``, ``>`` and ``&`` is written as a ``\\u00XX``
escape, so a token ``</script>`` or ``<!--`` cannot end the script block that holds it, and
``JSON.parse`` gives the text back unchanged.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Largest payload (the JSON text, in bytes) a view accepts unless ``max_bytes=`` says otherwise.
MAX_PAYLOAD_BYTES = 64 * 2**20

_DTYPES = ("float16", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32")


class PayloadTooLargeError(ValueError):
    """A view's data is over the payload limit; the message names what to select instead."""


def encode_array(a: Any, dtype: str = "float32") -> dict[str, Any]:
    """One array as a JSON-ready buffer.

    Parameters
    ----------
    a : array_like
        Any numeric array (numpy or torch on the CPU); converted to ``dtype``.
    dtype : str
        One of ``float16``, ``float32``, ``float64``, ``int8``, ``uint8``, ``int16``, ``uint16``,
        ``int32``, ``uint32`` (JavaScript has typed arrays for all of them; ``float16`` is widened to
        ``Float32Array`` there). 64-bit integers are not offered: JavaScript numbers would round them.

    Returns
    -------
    dict
        ``{"dtype": dtype, "shape": [...], "b64": str}`` with the little-endian C-order bytes.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"encode_array needs a numeric array, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "shape": [int(s) for s in out.shape], "b64": base64.b64encode(out.tobytes()).decode()}


def quantize_rows(a: Any) -> dict[str, Any]:
    """A non-negative array as ``uint8`` with one ``float32`` scale per row of the last axis.

    ``value ≈ q * scale[row]`` where ``scale[row] = max(row) / 255``: the largest entry of every row
    is exact and the error is at most half a step of that row's own range (attention rows, whose
    mass sits in a few keys, keep their shape). Negative or non-finite inputs are refused.

    Parameters
    ----------
    a : array_like, shape (..., N)
        Non-negative finite values.

    Returns
    -------
    dict
        An :func:`encode_array` dict of dtype ``uint8`` with an extra ``"scale"`` entry, itself an
        encoded ``float32`` array of shape ``a.shape[:-1]``.
    """
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim == 0:
        raise ValueError("quantize_rows needs at least one axis")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError("quantize_rows takes non-negative finite values only")
    top = arr.max(axis=-1) if arr.shape[-1] else np.zeros(arr.shape[:-1], np.float32)
    scale = (top / 255.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    q = np.clip(np.rint(arr / safe), 0, 255).astype(np.uint8)
    out = encode_array(q, "uint8")
    out["scale"] = encode_array(scale, "float32")
    return out


def decode_array(enc: Mapping[str, Any]) -> np.ndarray:
    """The inverse of :func:`encode_array` (and of :func:`quantize_rows`, as ``float32``)."""
    dtype = np.dtype(str(enc["dtype"])).newbyteorder("<")
    arr = np.frombuffer(base64.b64decode(enc["b64"]), dtype=dtype).reshape(enc["shape"])
    if "scale" in enc:
        return arr.astype(np.float32) * decode_array(enc["scale"])[..., None]
    return arr.astype(dtype.newbyteorder("="))


def encoded_size(shape: Sequence[int], dtype: str) -> int:
    """Bytes an array of ``shape`` and ``dtype`` takes once base64-encoded in the payload."""
    n = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    return 4 * ((n + 2) // 3)


def check_size(nbytes: int, what: str, instead: str, max_bytes: int | None = None) -> None:
    """Refuse ``nbytes`` of payload over the limit before anything large is encoded.

    Parameters
    ----------
    nbytes : int
        Estimated payload size in bytes (e.g. a sum of :func:`encoded_size`).
    what : str
        What is too large, e.g. ``"attention maps of 12 layers x 12 heads x 4096^2"``.
    instead : str
        What to pass to select less, e.g. ``"layers=[0, 5], heads=[3] or rows=range(0, 512)"``.
    max_bytes : int, optional
        The limit; :data:`MAX_PAYLOAD_BYTES` when ``None``.
    """
    limit = MAX_PAYLOAD_BYTES if max_bytes is None else int(max_bytes)
    if limit <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes!r}")
    if nbytes > limit:
        raise PayloadTooLargeError(
            f"{what} would make a payload of {nbytes / 2**20:.1f} MiB, over the limit of "
            f"{limit / 2**20:.1f} MiB; select less with {instead}, or raise max_bytes="
        )


def _html_safe(text: str) -> str:
    # Outside strings JSON never holds these characters, so escaping them everywhere is exact.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _check_leaves(obj: Any, path: str) -> None:
    if isinstance(obj, np.ndarray) or hasattr(obj, "detach"):
        raise TypeError(f"payload{path} is an array: encode it with encode_array first")
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"payload{path} is {obj}: JSON has no NaN or infinity; use null")
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"payload{path} has a non-string key {k!r}")
            _check_leaves(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_leaves(v, f"{path}[{i}]")


def encode_payload(obj: Mapping[str, Any], *, max_bytes: int | None = None, instead: str = "fewer items") -> str:
    """A view's payload as HTML-safe JSON.

    Parameters
    ----------
    obj : Mapping[str, Any]
        Strings, numbers, booleans, ``None``, lists and dicts, with arrays already encoded by
        :func:`encode_array` (a raw array is refused, as are NaN and infinity).
    max_bytes : int, optional
        Size limit of the JSON text; :data:`MAX_PAYLOAD_BYTES` when ``None``.
    instead : str
        What the error message suggests selecting when the limit is passed.

    Returns
    -------
    str
        JSON with ``<``, ``>`` and ``&`` escaped (safe inside ``<script>``).
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"payload must be a mapping, got {type(obj).__name__}")
    _check_leaves(obj, "")
    text = _html_safe(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False))
    check_size(len(text.encode("utf-8")), "this view's data", instead, max_bytes)
    return text
