"""One model-input normaliser for every function that runs a model.

Accepted forms, everywhere: text (a string or a list of strings) together with ``tokenizer=``
(encoded as one padded batch), a tokenizer encoding or any mapping of keyword arguments, an
``input_ids`` tensor or integer numpy array of shape (B, T) or (T,). A 1-D input is one example;
numpy values become tensors; everything moves to ``device`` when one is given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["as_inputs", "encode", "is_text", "token_shape"]

_FORMS = "text (with tokenizer=), a tokenizer encoding / dict of tensors, or an input_ids tensor or array"


def is_text(value: Any) -> bool:
    """A string, or a non-empty list/tuple of strings."""
    return isinstance(value, str) or (
        isinstance(value, (list, tuple)) and bool(value) and all(isinstance(t, str) for t in value)
    )


def encode(
    inputs: Any, tokenizer: Any = None, *, name: str = "inputs", device: torch.device | str | None = None
) -> tuple[dict[str, Any], list[Any] | None]:
    """``(kwargs, word_ids)``: keyword arguments for ``model(**kwargs)``, and the tokenizer's
    word index of every token when the input was text or a fast tokenizer's encoding (else None).

    Raises
    ------
    TypeError
        Text without a tokenizer, or an input of another type; integer ids of a float dtype.
    ValueError
        Empty text, no ``input_ids``/``inputs_embeds``, or ids that are not 1-D or 2-D.
    """
    if isinstance(inputs, (list, tuple)) and not inputs:
        raise ValueError(f"{name} is empty")
    if is_text(inputs):
        if tokenizer is None:
            raise TypeError(f"{name} is text: pass tokenizer= to encode it (or pass encoded inputs)")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        inputs = tokenizer(texts, return_tensors="pt", padding=True)
    word_ids = None
    if hasattr(inputs, "word_ids") and getattr(inputs, "encodings", None):
        with contextlib.suppress(Exception):  # slow tokenizers have no word ids
            word_ids = [inputs.word_ids(i) for i in range(len(inputs.encodings))]
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        inputs = {"input_ids": inputs}
    elif isinstance(inputs, Mapping) or hasattr(inputs, "keys"):
        inputs = dict(inputs)
    else:
        raise TypeError(f"{name} must be {_FORMS}; got {type(inputs).__name__}")
    if "input_ids" not in inputs and "inputs_embeds" not in inputs:
        raise ValueError(f"{name} needs 'input_ids' (or 'inputs_embeds'); got keys {sorted(inputs)}")
    batch: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"{name}[{key!r}] must be a numeric array, got dtype object")
            value = torch.from_numpy(value)
        if isinstance(value, torch.Tensor) and device is not None:
            value = value.to(device)
        batch[key] = value
    ids = batch.get("input_ids")
    if ids is not None:
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"{name}['input_ids'] must be a tensor or array, got {type(ids).__name__}")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(
                f"{name}: input_ids must be an integer tensor of token ids, shape (B, T) or (T,); got {ids.dtype}"
            )
        if ids.dim() not in (1, 2):
            raise ValueError(f"{name}: input_ids must have shape (B, T) or (T,); got {tuple(ids.shape)}")
        if ids.dim() == 1:  # one example: every 1-D tensor gets the batch dimension
            batch = {k: v[None] if isinstance(v, torch.Tensor) and v.dim() == 1 else v for k, v in batch.items()}
    return batch, word_ids


def as_inputs(
    inputs: Any, tokenizer: Any = None, *, name: str = "inputs", device: torch.device | str | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``model(**kwargs)`` from any accepted input form (see the module)."""
    return encode(inputs, tokenizer, name=name, device=device)[0]


def token_shape(inputs: Mapping[str, Any]) -> tuple[int, int]:
    """``(B, T)`` of normalised inputs."""
    x = inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]
    return int(x.shape[0]), int(x.shape[1])
