"""Gradient-guided edits: which single-token substitutions move the target most?

HotFlip (Ebrahimi et al. 2018) ranks every substitution x_i -> v by the first-order change of an
objective J, Δ ≈ (e_v − e_{x_i}) · ∂J/∂e_i, where e are rows of the input embedding matrix and
∂J/∂e_i is the gradient at the embedding output of position i: one backward pass scores all
T × V substitutions. First-order guesses can be wrong, so the best candidates are re-run through
the model and ranked by their true effect. The gradient is taken here through a forward hook on
the input embedding (no other llmdbg module is involved).

Objective J: log-probability of class ``target`` (sequence classifiers) or of the token
``target`` right after the text (causal LMs).
"""

from __future__ import annotations

from typing import Any

import torch

from ._internal.modes import device_of, eval_mode, gradient_mode
from ._internal.progress import progress_iter
from .adapters.layout import check_module

__all__ = ["suggest_edits"]


def _objective(model: torch.nn.Module, outputs: Any, target: int, last: torch.Tensor) -> torch.Tensor:
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise ValueError(
            f"{type(model).__name__} has no logits; suggest_edits needs a sequence classifier or a causal LM"
        )
    if logits.dim() == 3:
        logits = logits[torch.arange(len(last)), last]
    if not 0 <= target < logits.shape[-1]:
        raise ValueError(f"target {target} is out of range for {logits.shape[-1]} outputs")
    return torch.log_softmax(logits.double(), -1)[:, target]


def suggest_edits(
    model: torch.nn.Module,
    tokenizer: Any,
    text: str,
    target: int | str,
    k: int = 5,
    *,
    candidates: int = 4,
    increase: bool = True,
    batch_size: int = 64,
    progress: bool = True,
) -> Any:
    """Single-token substitutions that most increase (or decrease) the target, verified.

    Parameters
    ----------
    model : sequence classifier or causal LM (Hugging Face)
    tokenizer : its tokenizer
    text : str
    target : int or str
        Class index (classifier) or next token (causal LM: id or single-token string).
    k : int
        Rows returned.
    candidates : int
        ``candidates * k`` first-order suggestions are verified by re-running the model.
    increase : bool
        Rank by increase (True) or decrease of the target log-probability.
    progress : bool
        Show a progress bar (off when output is not interactive).

    Returns
    -------
    pandas.DataFrame
        ``k`` rows, best first: ``position``, ``original``, ``replacement``, ``replacement_id``,
        ``predicted_delta`` (first order), ``delta`` (verified change of the target
        log-probability), ``score`` (new log-probability), ``text`` (the edited text).
        ``attrs["base_score"]`` holds the original log-probability.
    """
    import pandas as pd

    check_module(model)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty str")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    getter = getattr(model, "get_input_embeddings", None)
    emb = getter() if callable(getter) else None
    if not isinstance(emb, torch.nn.Embedding):
        raise TypeError(f"{type(model).__name__} has no input embedding (get_input_embeddings())")
    if isinstance(target, str):
        ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"target {target!r} is {len(ids)} tokens; pass a single token or an id")
        target = int(ids[0])
    dev = device_of(model)
    enc = tokenizer(text, return_tensors="pt")
    enc = {k_: v.to(dev) for k_, v in enc.items()}
    ids = enc["input_ids"]
    last = torch.tensor([ids.shape[1] - 1], device=dev)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])

    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        if not output.requires_grad:
            output.requires_grad_(True)
        captured["e"] = output
        return output

    handle = emb.register_forward_hook(hook)
    try:
        with gradient_mode(model, warn_train=False):
            base = _objective(model, model(**enc), target, last)[0]
            (grad,) = torch.autograd.grad(base, captured["e"])
    finally:
        handle.remove()
    weight = emb.weight.detach().double()
    g = grad[0].double()  # (T, D)
    first = g @ weight.T - (g * weight[ids[0]]).sum(-1, keepdim=True)  # (T, V)
    sign = 1.0 if increase else -1.0
    first = sign * first
    first[:, list(special)] = -torch.inf  # never suggest special tokens
    first[torch.arange(ids.shape[1]), ids[0]] = -torch.inf  # nor the token already there
    for i, tok in enumerate(ids[0].tolist()):
        if tok in special:
            first[i] = -torch.inf
    n_cand = min(candidates * k, int(torch.isfinite(first).sum()))
    if n_cand == 0:
        raise ValueError("no position can be edited (the text holds only special tokens)")
    top = torch.topk(first.flatten(), n_cand).indices
    pos, vocab = top // first.shape[1], top % first.shape[1]
    edited = ids.repeat(n_cand, 1)
    edited[torch.arange(n_cand), pos] = vocab
    scores = []
    with eval_mode(model), torch.no_grad():
        for s in progress_iter(range(0, n_cand, batch_size), progress, "verifying edits", unit="batch"):
            batch = {k_: v.repeat(min(batch_size, n_cand - s), 1) for k_, v in enc.items()}
            batch["input_ids"] = edited[s : s + batch_size]
            scores.append(_objective(model, model(**batch), target, last.repeat(len(batch["input_ids"]))))
    new = torch.cat(scores).cpu().numpy()
    base_v = float(base.detach())
    table = pd.DataFrame(
        {
            "position": pos.cpu().numpy(),
            "original": tokenizer.convert_ids_to_tokens(ids[0, pos].tolist()),
            "replacement": tokenizer.convert_ids_to_tokens(vocab.tolist()),
            "replacement_id": vocab.cpu().numpy(),
            "predicted_delta": sign * first.flatten()[top].cpu().numpy(),
            "delta": new - base_v,
            "score": new,
            "text": [tokenizer.decode(row, skip_special_tokens=True) for row in edited.tolist()],
        }
    )
    table = table.sort_values("delta", ascending=not increase, kind="stable").head(k).reset_index(drop=True)
    table.attrs["base_score"] = base_v
    return table
