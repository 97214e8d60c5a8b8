"""What :func:`llmdbg.attribute_generation` is given, checked and turned into token ids: the model
(a causal LM), the prompt, a forced target or a generated one, and the contrast foils."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..adapters.layout import check_module
from ..adapters.task import task_type
from ._inputs import config_id


def _check_model(model: torch.nn.Module) -> None:
    check_module(model)
    kind = task_type(model)
    if kind == "seq2seq":
        raise ValueError(
            f"attribute_generation supports decoder-only causal LMs; {type(model).__name__} is an encoder-decoder, "
            "whose generated tokens are explained by the encoder's source tokens and the decoder's prefix, two "
            "embeddings that this function does not interpolate. Use llmdbg.integrated_gradients(model, inputs, "
            "target=continuation) for source attributions of an encoder-decoder"
        )
    if kind != "causal-lm" or not callable(getattr(model, "generate", None)):
        raise ValueError(
            f"attribute_generation needs a causal language model with an LM head (AutoModelForCausalLM); "
            f"{type(model).__name__} has none"
        )


def _prompt_ids(prompt: Any, tokenizer: Any) -> torch.Tensor:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise TypeError("prompt is text; pass the tokenizer")
        ids = torch.tensor(tokenizer(prompt)["input_ids"], dtype=torch.long)
    elif isinstance(prompt, (torch.Tensor, np.ndarray, list, tuple)):
        arr = torch.as_tensor(np.asarray(prompt.cpu() if isinstance(prompt, torch.Tensor) else prompt))
        if arr.dtype.is_floating_point or arr.dtype == torch.bool:
            raise TypeError(f"prompt ids must be integers, got {arr.dtype}")
        if arr.dim() == 2 and arr.shape[0] != 1:
            raise ValueError(
                f"attribute_generation explains one prompt at a time; got a batch of {arr.shape[0]}. Loop over the "
                "prompts (each result has its own length)"
            )
        ids = arr.reshape(-1).long()
    else:
        raise TypeError(f"prompt must be text, a list of ids or a (1, P) tensor, got {type(prompt).__name__}")
    if ids.numel() == 0:
        raise ValueError("prompt is empty; give at least one token")
    return ids


def _encode_text(text: str, tokenizer: Any, what: str) -> torch.Tensor:
    if tokenizer is None:
        raise TypeError(f"{what} is text; pass the tokenizer")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{what} {text!r} tokenises to nothing; give at least one token")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        bad = [tokenizer.convert_ids_to_tokens(i) for i in ids]
        raise ValueError(
            f"the tokenizer cannot encode {what} {text!r}: it maps part of it to the unknown token {bad}; "
            "pass token ids instead"
        )
    return torch.tensor(ids, dtype=torch.long)


def _as_ids(value: Any, what: str) -> torch.Tensor:
    arr = torch.as_tensor(np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value))
    if arr.dtype.is_floating_point or arr.dtype == torch.bool:
        raise TypeError(f"{what} ids must be integers, got {arr.dtype}")
    if arr.dim() == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.dim() != 1 or arr.numel() == 0:
        raise ValueError(f"{what} must be text or a non-empty 1-D sequence of ids, got shape {tuple(arr.shape)}")
    return arr.long()


def _generate(model: Any, ids: torch.Tensor, max_new_tokens: Any, tokenizer: Any, kwargs: dict) -> torch.Tensor:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise TypeError(f"max_new_tokens must be a positive int when no target is given, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    args = {"do_sample": False, **kwargs, "max_new_tokens": int(max_new_tokens)}
    if int(args.get("num_return_sequences", 1)) != 1:
        raise ValueError(
            "generation_kwargs num_return_sequences > 1: attribute_generation explains one sequence; call it once per "
            "sequence (pass each as target=) or use llmdbg.capture around model.generate for every sequence's step scores"
        )
    pad = config_id(model, tokenizer, "pad")
    pad = pad if pad is not None else config_id(model, tokenizer, "eos")
    if pad is not None:
        args.setdefault("pad_token_id", pad)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(ids[None].to(device), attention_mask=torch.ones_like(ids)[None].to(device), **args)
    seq = out.sequences if hasattr(out, "sequences") else out
    gen = seq[0, ids.numel() :].cpu()
    if gen.numel() == 0:
        raise ValueError("generate() produced no tokens; raise max_new_tokens or check the stopping criteria")
    return gen


def _foil(contrast: Any, n: int, tokenizer: Any, vocab: int | None) -> torch.Tensor | None:
    if contrast is None:
        return None
    if isinstance(contrast, (int, np.integer)) and not isinstance(contrast, bool):
        foil = torch.full((n,), int(contrast), dtype=torch.long)
    elif isinstance(contrast, str):
        foil = _encode_text(contrast, tokenizer, "contrast")
    else:
        foil = _as_ids(contrast, "contrast")
    if foil.numel() != n:
        raise ValueError(
            f"contrast has {foil.numel()} tokens but the target has {n}; a foil is compared step by step, so give one "
            "token per target token (or one id for every step)"
        )
    if (foil < 0).any() or (vocab is not None and (foil >= vocab).any()):
        raise ValueError(f"contrast ids must be in [0, {vocab}), got {foil.tolist()}")
    return foil
