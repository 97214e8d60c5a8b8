"""Targets: which scalar(s) of the model output an attribution explains.

A target maps the outputs of a forward over N rows (path points of several examples, row r
belonging to example ``rows[r]``) to an (N, G) float32 tensor: G = 1 for a class logit, the next
token's log-probability, a masked token's log-probability or a callable; G = T_out for a
continuation (one log-probability per target token, all from one teacher-forced forward).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapters.task import task_type
from ._inputs import config_id, model_config

# The one task vocabulary (adapters.task) in the short words this module's branches use.
_KIND = {"seq2seq": "seq2seq", "causal-lm": "causal", "masked-lm": "masked"}


def _kind(model: nn.Module) -> str:
    return _KIND.get(task_type(model), "other")


def _accepts_batch(fn: Callable) -> bool:
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _is_continuation(target: Any) -> bool:
    if isinstance(target, str):  # "predicted" is the keyword; pass [" predicted"] for that word as text
        return target != "predicted"
    if isinstance(target, (list, tuple)) and target:
        return all(isinstance(t, str) for t in target) or all(
            isinstance(t, (list, tuple, np.ndarray, torch.Tensor)) for t in target
        )
    if isinstance(target, (np.ndarray, torch.Tensor)):
        return np.ndim(target) == 2
    return False


def _per_example(value: Any, b: int, what: str) -> torch.Tensor:
    arr = torch.as_tensor(np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value))
    if arr.dtype.is_floating_point or arr.dtype == torch.bool:
        raise TypeError(f"{what} must be integer ids, got {arr.dtype}")
    arr = arr.reshape(-1).long()
    if arr.numel() == 1:
        arr = arr.expand(b)
    if arr.numel() != b:
        raise ValueError(f"{what} must be one int or one per example ({b}), got {arr.numel()} values")
    if (arr < 0).any():
        raise ValueError(f"{what} {int(arr[arr < 0][0])} is out of range: ids and classes are >= 0")
    return arr


class Target:
    """The resolved target of one attribution call.

    Attributes
    ----------
    n_out : int
        G, the number of scalars per example.
    ids : torch.Tensor or None
        ``(B, G)`` int64 class or token ids (None for callables).
    valid : torch.Tensor
        ``(B, G)`` bool; False for the padding of ragged continuations.
    positions : torch.Tensor or None
        ``(B, G)`` int64 positions whose logits are read (language models).
    foil : torch.Tensor or None
        ``(B, G)`` int64 contrast tokens: the value is then log p(ids) − log p(foil) at the same
        position (contrastive attribution, Yin & Neubig 2022), which is the logit difference.
    """

    def __init__(
        self,
        kind: str,
        n_out: int,
        ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        fn: Callable | None = None,
        vocab: int | None = None,
        keep: int | None = None,
        length: int | None = None,
        n_examples: int = 0,
    ):
        self.length = length
        self.n_examples = n_examples or (valid.shape[0] if valid is not None else 0)
        self.kind, self.n_out, self.ids, self.positions, self.fn = kind, n_out, ids, positions, fn
        self.vocab = vocab
        self.valid = valid
        self.keep = keep  # logits_to_keep for causal LMs: only the positions read are projected
        self.batch_for_fn = fn is not None and _accepts_batch(fn)
        self.foil: torch.Tensor | None = None

    @property
    def resolved(self) -> bool:
        return self.kind == "callable" or (self.ids is not None and bool((self.ids >= 0).all()))

    def needs(self, rows: torch.Tensor) -> bool:
        """Whether a "predicted" target is still unknown for some of ``rows``."""
        if self.kind == "callable":
            return False
        return self.ids is None or bool((self.ids[rows.cpu()] < 0).any())

    def model_kwargs(self) -> dict[str, Any]:
        return {} if self.keep is None else {"logits_to_keep": self.keep}

    def _logits(self, outputs: Any) -> torch.Tensor:
        logits = (
            outputs.logits if hasattr(outputs, "logits") else (outputs if isinstance(outputs, torch.Tensor) else None)
        )
        if logits is None:
            raise ValueError(
                "the model returns no logits; pass target=callable(outputs) -> (N,) values, e.g. "
                "lambda out: out.last_hidden_state[:, 0].norm(dim=-1)"
            )
        return logits

    def _picked(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(N, G, V) logits at the target positions of each row."""
        assert self.positions is not None  # token targets always have positions
        pos = self.positions[rows]
        if (
            self.keep is not None and self.length is not None and logits.shape[1] == self.keep
        ):  # only the last `keep` positions
            pos = pos - (self.length - self.keep)
        n = torch.arange(logits.shape[0], device=logits.device)[:, None]
        return logits[n, pos.to(logits.device)]

    def resolve(self, outputs: Any, rows: torch.Tensor) -> None:
        """Fix "predicted" targets from the outputs at the input (α = 1) rows, one per example."""
        if self.resolved:
            return
        logits = self._logits(outputs)
        if self.ids is None:  # filled group by group when examples are split across forwards
            self.ids = torch.full((self.n_examples, self.n_out), -1, dtype=torch.long)
        best = logits.argmax(-1).reshape(-1, 1) if self.kind == "class" else self._picked(logits, rows).argmax(-1)
        self.ids[rows.cpu()] = best.cpu()
        self.check(logits.shape[-1])

    def check(self, size: int) -> None:
        if self.ids is None:
            return
        what = "class" if self.kind == "class" else "token id"
        bad = (self.ids < -1) | (self.ids >= size)  # -1: "predicted", not resolved yet for that example
        if self.valid is not None:
            bad &= self.valid.cpu()
        if bad.any():
            raise ValueError(
                f"target {what} {int(self.ids[bad][0])} is out of range: the model has {size} "
                f"{'classes' if self.kind == 'class' else 'tokens in its vocabulary'}"
            )

    def __call__(self, outputs: Any, rows: torch.Tensor, batch: dict[str, Any] | None = None) -> torch.Tensor:
        """(N, G) float32 target values of the N rows."""
        if self.kind == "callable":
            assert self.fn is not None
            value = self.fn(outputs, {**(batch or {}), "example": rows}) if self.batch_for_fn else self.fn(outputs)
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"target callable must return a torch tensor (differentiable), got {type(value).__name__}"
                )
            if value.dim() == 0 or value.shape[0] != rows.shape[0] or value[0].numel() != 1:
                raise ValueError(
                    f"target callable must return one value per row, shape ({rows.shape[0]},); got {tuple(value.shape)}"
                )
            if not value.dtype.is_floating_point:
                raise TypeError(f"target callable must return floating point values, got {value.dtype}")
            return value.float().reshape(rows.shape[0], -1)
        logits = self._logits(outputs)
        assert self.ids is not None  # class and token targets always have ids
        ids = self.ids.to(logits.device)[rows.to(logits.device)]  # (N, G)
        if self.kind == "class":
            if logits.dim() != 2:
                raise ValueError(
                    f"target is a class index but the model's logits have shape {tuple(logits.shape)}; "
                    "for language models pass a token id or continuation"
                )
            return logits.gather(1, ids).float()
        picked = self._picked(logits, rows).float()  # (N, G, V)
        if self.foil is not None:  # log p(y) − log p(f): the log-normaliser cancels
            foil = self.foil.to(logits.device)[rows.to(logits.device)]
            return (picked.gather(2, ids[..., None]) - picked.gather(2, foil[..., None])).squeeze(2)
        return torch.log_softmax(picked, dim=-1).gather(2, ids[..., None]).squeeze(2)


def build_target(model: nn.Module, batch: dict[str, Any], target: Any, tokenizer: Any) -> tuple[Target, dict, Any]:
    """Resolve ``target`` for ``batch``.

    Returns the Target, the batch to run (extended with the continuation for causal LMs, or with
    decoder inputs for encoder-decoders) and, for continuations, ``(positions, n_prompt)``: the
    original indices of each example's prompt tokens in the re-packed batch (None otherwise).
    """
    ids = batch["input_ids"]
    bsz, t = ids.shape
    vocab = getattr(model_config(model), "vocab_size", None)
    if callable(target) and not isinstance(target, (str, torch.Tensor, np.ndarray)):
        return Target("callable", 1, fn=target, valid=torch.ones(bsz, 1, dtype=torch.bool)), batch, None
    kind = _kind(model)
    if _is_continuation(target):
        if kind not in ("causal", "seq2seq"):
            raise ValueError(
                "a continuation target (text or 2-D ids) needs a causal or encoder-decoder language "
                f"model; {type(model).__name__} is neither"
            )
        return _continuation(model, batch, target, tokenizer, kind, vocab)
    if isinstance(target, str) and target != "predicted":
        raise ValueError(f"target string must be 'predicted' or continuation text, got {target!r}")
    given = None if target is None or isinstance(target, str) else _per_example(target, bsz, "target")
    mask = batch["attention_mask"].bool()
    if kind in ("causal", "seq2seq", "masked"):
        if kind == "masked":
            mask_id = config_id(model, tokenizer, "mask")
            hits = (ids == mask_id) if mask_id is not None else torch.zeros_like(mask)
            if not hits.any(1).all():
                raise ValueError(
                    "masked LM target: every input needs a mask token (tokenizer.mask_token) whose "
                    "prediction is explained"
                )
            pos = hits.float().argmax(1)
        elif kind == "seq2seq":
            dec = batch.get("decoder_input_ids")
            if dec is None:
                raise ValueError(
                    "encoder-decoder models need decoder_input_ids in inputs, or a continuation target "
                    "(text or ids) to attribute"
                )
            dmask = batch.get("decoder_attention_mask")
            dlen = dec.shape[1]
            pos = (
                torch.full((bsz,), dlen - 1)
                if dmask is None
                else torch.where(dmask.bool().cpu(), torch.arange(dlen), -1).amax(-1)
            )
        else:
            pos = torch.where(mask.cpu(), torch.arange(t), -1).amax(-1)
        keep = None
        if kind == "causal" and _takes(model, "logits_to_keep"):
            keep = int(t - pos.min())
        tgt = Target(
            "token",
            1,
            None if given is None else given[:, None],
            pos.reshape(-1, 1).long(),
            torch.ones(bsz, 1, dtype=torch.bool),
            vocab=vocab,
            keep=keep,
            length=t,
        )
    else:
        tgt = Target("class", 1, None if given is None else given[:, None], valid=torch.ones(bsz, 1, dtype=torch.bool))
        n_labels = getattr(model_config(model), "num_labels", None)
        if given is not None and n_labels:
            tgt.check(int(n_labels))
    if given is not None and tgt.kind == "token" and vocab:
        tgt.check(int(vocab))
    return tgt, batch, None


def _takes(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _continuation_ids(target: Any, tokenizer: Any, bsz: int) -> list[list[int]]:
    if isinstance(target, str) or (isinstance(target, (list, tuple)) and target and isinstance(target[0], str)):
        texts = [target] * bsz if isinstance(target, str) else list(target)
        if tokenizer is None:
            raise TypeError("a continuation given as text needs tokenizer=")
        seqs = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in texts]
    else:
        arr = target.cpu().numpy() if isinstance(target, torch.Tensor) else target
        if isinstance(arr, np.ndarray):
            if arr.dtype.kind not in "iu":
                raise TypeError(f"continuation ids must be integers, got {arr.dtype}")
            seqs = [list(map(int, row)) for row in arr]
        else:
            seqs = []
            for row in arr:
                row = np.asarray(row.cpu() if isinstance(row, torch.Tensor) else row)
                if row.size and row.dtype.kind not in "iu":
                    raise TypeError(f"continuation ids must be integers, got {row.dtype}")
                seqs.append([int(v) for v in row.reshape(-1)])
    if len(seqs) == 1 and bsz > 1:  # one continuation (a one-text list, one row of ids) for all
        seqs = seqs * bsz
    if len(seqs) != bsz:
        raise ValueError(f"target: got {len(seqs)} continuations for {bsz} inputs")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("target continuation tokenises to nothing (empty text or ids); give at least one token")
    return seqs


def _continuation(model, batch, target, tokenizer, kind, vocab):
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    bsz, t = ids.shape
    seqs = _continuation_ids(target, tokenizer, bsz)
    g = max(map(len, seqs))
    cont = torch.zeros(bsz, g, dtype=torch.long)
    valid = torch.zeros(bsz, g, dtype=torch.bool)
    for i, s in enumerate(seqs):
        cont[i, : len(s)] = torch.tensor(s)
        valid[i, : len(s)] = True
    if kind == "seq2seq":
        start = getattr(model_config(model), "decoder_start_token_id", None)
        if start is None:
            raise ValueError("the encoder-decoder model has no decoder_start_token_id in its config")
        dec = torch.cat([torch.full((bsz, 1), int(start)), cont[:, :-1]], 1)
        out = dict(
            batch,
            decoder_input_ids=dec.to(ids.device),
            decoder_attention_mask=torch.cat([torch.ones(bsz, 1, dtype=torch.bool), valid[:, :-1]], 1)
            .long()
            .to(ids.device),
        )
        pos = torch.arange(g).expand(bsz, g).clone()
        tgt = Target("token", g, cont, pos, valid, vocab=vocab)
        if vocab:
            tgt.check(int(vocab))
        return tgt, out, None
    extra = [
        k
        for k, v in batch.items()
        if k not in ("input_ids", "attention_mask")
        and isinstance(v, torch.Tensor)
        and v.dim() >= 2
        and v.shape[:2] == (bsz, t)
    ]
    if "position_ids" in extra:
        raise ValueError("continuation targets re-pack the prompt right-padded; leave position_ids out")
    # Re-pack right-padded: prompt tokens, then the continuation, so position ids are those of an
    # unpadded sequence whichever side the prompt was padded on.
    prompts = [ids[i][mask[i]].cpu() for i in range(bsz)]
    lens = torch.tensor([len(p) for p in prompts])
    total = int((lens + valid.sum(1)).max())
    pad = config_id(model, tokenizer, "pad")
    pad = pad if pad is not None else (config_id(model, tokenizer, "eos") or 0)
    new_ids = torch.full((bsz, total), pad, dtype=torch.long)
    new_mask = torch.zeros(bsz, total, dtype=torch.long)
    prompt_region = torch.zeros(bsz, total, dtype=torch.bool)
    for i, p in enumerate(prompts):
        n, m = len(p), int(valid[i].sum())
        new_ids[i, :n] = p
        new_ids[i, n : n + m] = cont[i, :m]
        new_mask[i, : n + m] = 1
        prompt_region[i, :n] = True
    pos = (lens[:, None] - 1 + torch.arange(g)[None]).clamp(max=total - 1)
    keep = int(total - pos.min()) if _takes(model, "logits_to_keep") else None
    tgt = Target("token", g, cont, pos.long(), valid, vocab=vocab, keep=keep, length=total)
    if vocab:
        tgt.check(int(vocab))
    positions = [torch.nonzero(mask[i].cpu()).reshape(-1) for i in range(bsz)]
    out = dict(batch, input_ids=new_ids.to(ids.device), attention_mask=new_mask.to(ids.device))
    for key in extra:  # e.g. token_type_ids: the prompt's values, zeros for the continuation
        value = batch[key]
        packed = torch.zeros((bsz, total, *value.shape[2:]), dtype=value.dtype, device=value.device)
        for i in range(bsz):
            kept = value[i][mask[i]]
            packed[i, : kept.shape[0]] = kept
        out[key] = packed
    return tgt, out, (positions, prompt_region, t)
