"""Turn what users pass (text plus a tokenizer, an encoding, ids) into the tensors every attribution
method needs: the model inputs, the input embedding module, the input and baseline embeddings in
float32, which positions are attributed, and token strings. Also the model-state guard (eval mode,
parameters not tracked) shared by every method."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .._internal.inputs import encode
from ..adapters.modules import hf_model

BASELINES = ("pad", "mask", "unk", "zeros")


@dataclasses.dataclass
class Prepared:
    """Checked inputs of one attribution call (tensors on the model's device).

    Attributes
    ----------
    batch : dict
        Model keyword arguments, each tensor with leading dimension B.
    ids : torch.Tensor
        ``(B, T)`` int64, the ids that go through the attributed embedding.
    embedding : torch.nn.Module
        The input word embedding; its output is replaced along the path.
    x, b : torch.Tensor
        ``(B, T, d)`` float32 input and baseline embeddings (equal where not attributed).
    attributable : torch.Tensor
        ``(B, T)`` bool, positions whose embedding is interpolated (real, non-special tokens of the
        prompt; special tokens are kept unless the baseline is "zeros" or an array).
    mask : torch.Tensor
        ``(B, T)`` bool, real (non-padding) tokens.
    dtype : torch.dtype
        The embedding output dtype (the path is cast to it).
    """

    model: nn.Module
    batch: dict[str, Any]
    ids: torch.Tensor
    embedding: nn.Module
    x: torch.Tensor
    b: torch.Tensor
    attributable: torch.Tensor
    mask: torch.Tensor
    dtype: torch.dtype
    tokenizer: Any = None
    word_ids: list[list[int | None]] | None = None

    @property
    def diff(self) -> torch.Tensor:
        return self.x - self.b

    @property
    def device(self) -> torch.device:
        return self.x.device


def find_embedding(model: nn.Module, layer: Any = "embeddings") -> nn.Module:
    """The input word embedding of ``model``: the module named by ``layer``, or (``"embeddings"``)
    the one llmdbg's layout finds, ``get_input_embeddings()``, or the first ``nn.Embedding``."""
    if isinstance(layer, nn.Module):
        return layer
    if not isinstance(layer, str):
        raise TypeError(f"layer must be 'embeddings', a module name or a module, got {type(layer).__name__}")
    if layer != "embeddings":
        try:
            return model.get_submodule(layer)
        except AttributeError:
            from ..adapters.layout import closest_names

            hint = closest_names(model, layer)
            raise ValueError(
                f"layer {layer!r} is not a module of {type(model).__name__}"
                + (f"; did you mean {', '.join(hint)}?" if hint else "")
            ) from None
    from ..adapters.layout import find_layout

    with contextlib.suppress(ValueError, TypeError):
        name = find_layout(model).embeddings
        if name:
            return model.get_submodule(name)
    getter = getattr(model, "get_input_embeddings", None)
    with contextlib.suppress(NotImplementedError, AttributeError, TypeError):
        found = getter() if callable(getter) else None
        if isinstance(found, nn.Module):
            return found
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return module
    raise ValueError(
        f"{type(model).__name__} has no input embeddings (no get_input_embeddings() and no "
        "nn.Embedding); pass layer=<module or name> of the embedding to attribute to"
    )


def model_batch(inputs: Any, tokenizer: Any, device: torch.device) -> tuple[dict[str, Any], list | None]:
    """Model keyword arguments (through the one normaliser, :func:`llmdbg._internal.inputs.encode`)
    with what attributions need on top: ``input_ids`` present, int64, and an ``attention_mask``."""
    batch, word_ids = encode(inputs, tokenizer, device=device)
    ids = batch.get("input_ids")
    if not isinstance(ids, torch.Tensor):
        raise ValueError("inputs must contain input_ids (attributions interpolate the embeddings of these ids)")
    batch["input_ids"] = ids.long()
    if "attention_mask" not in batch:
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    return batch, word_ids


def model_config(model: nn.Module) -> Any:
    """The config of the transformers model doing ``model``'s work (through compile, DDP, PEFT or a
    user's wrapper), or None for a plain module."""
    return getattr(hf_model(model) or model, "config", None)


def config_id(model: nn.Module, tokenizer: Any, name: str) -> int | None:
    """A special token id (``pad``, ``mask``, ``unk``, ``bos``, ``eos``, ``cls``, ``sep``) from the
    tokenizer or the model config."""
    model = hf_model(model) or model  # a wrapper's special tokens are its transformers model's
    for source in (tokenizer, getattr(model, "config", None), getattr(model, "generation_config", None)):
        value = getattr(source, f"{name}_token_id", None) if source is not None else None
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


def special_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    found = set(getattr(tokenizer, "all_special_ids", None) or ())
    for name in ("bos", "eos", "cls", "sep", "pad"):
        value = config_id(model, tokenizer, name)
        if value is not None:
            found.add(value)
    return found


def _as_tensor(value: Any, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device)
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError("baseline must be a numeric array")
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device)


@torch.no_grad()
def prepare(
    model: nn.Module,
    batch: dict[str, Any],
    *,
    tokenizer: Any,
    baseline: Any,
    layer: Any,
    attributable: torch.Tensor | None = None,
    word_ids=None,
) -> Prepared:
    """Embeddings and baseline for ``batch`` (already extended by the target, e.g. a continuation).

    ``attributable`` (B, T) bool limits the interpolated positions further (a continuation's tokens
    are not attributed).
    """
    embedding = find_embedding(model, layer)
    ids = batch["input_ids"]
    mask = batch["attention_mask"].bool()
    x_raw = embedding(ids)
    if not isinstance(x_raw, torch.Tensor) or x_raw.dim() != 3 or x_raw.shape[:2] != ids.shape:
        raise ValueError(
            f"the embedding module {type(embedding).__name__} must map (B, T) ids to (B, T, d) "
            "embeddings; pass layer=<the word embedding>"
        )
    dtype = x_raw.dtype
    x = x_raw.float()
    region = mask if attributable is None else mask & attributable
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(map(repr, BASELINES))} or an array, got {baseline!r}")
        if baseline == "zeros":
            b = torch.zeros_like(x)
        else:
            token = config_id(model, tokenizer, baseline)
            if token is None and baseline == "pad":
                token = config_id(model, tokenizer, "eos")  # GPT-2 style models have no pad token
            if token is None:
                raise ValueError(
                    f"baseline={baseline!r} needs a {baseline} token id, but neither the tokenizer "
                    "nor the model config defines one; use baseline='zeros' or pass an array"
                )
            keep = torch.tensor(sorted(special_ids(model, tokenizer) - {token}), dtype=torch.long, device=ids.device)
            region = region & ~torch.isin(ids, keep)
            b = embedding(torch.full_like(ids, token)).float()
    else:
        arr = _as_tensor(baseline, ids.device)
        bsz, t = ids.shape
        d = x.shape[-1]
        if not arr.dtype.is_floating_point:
            if arr.dim() in (1, 2) and arr.shape[-1] == t and arr.dtype != torch.bool:
                base_ids = arr.long().expand(bsz, t) if arr.dim() == 1 or arr.shape[0] == 1 else arr.long()
                if base_ids.shape != ids.shape:
                    raise ValueError(
                        f"baseline ids have shape {tuple(arr.shape)}; expected (B, T) = {(bsz, t)} or (T,)"
                    )
                b = embedding(base_ids).float()
            else:
                raise TypeError(
                    f"baseline embeddings must be floating point, got {arr.dtype} of shape "
                    f"{tuple(arr.shape)} (integer baselines are token ids of shape (B, T) or (T,))"
                )
        else:
            if arr.dim() == 2 and arr.shape == (t, d):
                arr = arr[None].expand(bsz, t, d)
            if arr.shape != (bsz, t, d):
                raise ValueError(
                    f"baseline has shape {tuple(arr.shape)}; expected embeddings of shape (B, T, d) = "
                    f"{(bsz, t, d)} or (T, d), or ids of shape (B, T)"
                )
            b = arr.float()
    b = torch.where(region[..., None], b, x).contiguous()
    return Prepared(model, batch, ids, embedding, x.contiguous(), b, region, mask, dtype, tokenizer, word_ids)


def token_strings(ids: torch.Tensor, tokenizer: Any) -> list[list[str]]:
    rows = ids.tolist()
    if tokenizer is None or not hasattr(tokenizer, "convert_ids_to_tokens"):
        return [[str(i) for i in row] for row in rows]
    return [[str(t) for t in tokenizer.convert_ids_to_tokens(row)] for row in rows]


@contextlib.contextmanager
def replaced_output(module: nn.Module) -> Iterator[dict[str, Any]]:
    """A forward hook that replaces ``module``'s output with ``slot["value"]`` on its next call.

    The slot is consumed by that call (a model that calls the embedding twice, e.g. for decoder
    ids, sees the real output the second time); ``slot["fired"]`` counts replacements.
    """
    slot: dict[str, Any] = {"value": None, "fired": 0}

    def hook(mod: nn.Module, args: Any, output: Any) -> Any:
        value = slot["value"]
        if value is None:
            return None
        if not isinstance(output, torch.Tensor) or output.shape != value.shape:
            raise RuntimeError(
                f"the attributed embedding returned shape {tuple(getattr(output, 'shape', ()))}, "
                f"expected {tuple(value.shape)}; pass layer=<the word embedding>"
            )
        slot["value"] = None
        slot["fired"] += 1
        return value

    handle = module.register_forward_hook(hook)
    try:
        yield slot
    finally:
        handle.remove()
