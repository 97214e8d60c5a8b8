"""Occlusion (Zeiler & Fergus 2014) for text: how much the target drops when a window of tokens
is replaced by a neutral token or deleted. Score of token i: the mean of F(x) − F(x without W)
over the windows W that contain it (Captum's Occlusion convention). Forward passes only, batched
in chunks; no gradients, so it also works where gradients are unreliable (saturation, bf16)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._internal.modes import gradient_mode
from .._internal.progress import progress_bar
from ..adapters.modules import hooks_fire
from ._assemble import assemble
from ._engine import forward_rows, rows_per_chunk
from ._inputs import special_ids
from ._targets import Target
from .integrated import setup
from .result import Attribution

REPLACEMENTS = ("pad", "mask", "unk", "delete")


def _windows(region: torch.Tensor, window: int, stride: int) -> list[tuple[int, list[int]]]:
    """(example, positions) for windows of ``window`` consecutive attributed positions."""
    out: list[tuple[int, list[int]]] = []
    for e in range(region.shape[0]):
        pos = torch.nonzero(region[e]).reshape(-1).tolist()
        if not pos:
            continue
        starts = list(range(0, max(1, len(pos) - window + 1), stride))
        if starts[-1] + window < len(pos):  # cover the tail too
            starts.append(len(pos) - window)
        out.extend((e, pos[s : s + window]) for s in starts)
    return out


def _deleted_batch(prep, target: Target, pairs) -> tuple[dict[str, Any], Target]:
    """A right-padded batch with each pair's window removed, and the target at the moved positions."""
    batch = prep.batch
    mask = batch["attention_mask"].bool().cpu()
    n, t = len(pairs), mask.shape[1]
    keeps = []
    for e, pos in pairs:
        keep = mask[e].clone()
        keep[pos] = False
        keeps.append(keep)
    keep = torch.stack(keeps)  # (N, T)
    length = int(keep.sum(1).max())
    ex = torch.tensor([e for e, _ in pairs])
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == mask.shape:
            src = value[ex.to(value.device)]
            fill = torch.zeros((n, length, *value.shape[2:]), dtype=value.dtype, device=value.device)
            for i in range(n):
                kept = src[i][keep[i].to(value.device)]
                fill[i, : kept.shape[0]] = kept
            out[key] = fill
        elif isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == mask.shape[0]:
            out[key] = value[ex.to(value.device)]
        else:
            out[key] = value
    moved = None
    if target.positions is not None:
        rank = keep.long().cumsum(1) - 1  # new index of every kept position
        old = target.positions[ex]  # (N, G)
        moved = rank.gather(1, old.clamp(max=t - 1))
    sub = Target(
        target.kind,
        target.n_out,
        None if target.ids is None else target.ids[ex],
        moved,
        None if target.valid is None else target.valid[ex],
        fn=target.fn,
        vocab=target.vocab,
    )
    return out, sub


def occlusion(
    model: torch.nn.Module,
    inputs: Any,
    *,
    target: Any = None,
    window: int = 1,
    stride: int = 1,
    replacement: str = "pad",
    layer: Any = "embeddings",
    batch_size: int | str = "auto",
    tokenizer: Any = None,
    progress: bool = True,
) -> Attribution:
    """Token occlusion sensitivity.

    Parameters not listed here are those of :func:`integrated_gradients`.

    Parameters
    ----------
    window : int
        Consecutive attributed tokens occluded together (special tokens are never occluded).
    stride : int
        Step between window starts.
    replacement : {"pad", "mask", "unk", "delete"}
        Replace the window's word embeddings by those of that token (position embeddings and the
        attention mask unchanged), or delete the tokens (the sequence gets shorter; later targets
        move with it).

    Returns
    -------
    Attribution
        ``scores`` (B, T) float32 (``(B, T_out, T)`` for continuations): mean drop of the target
        over the windows holding each token; ``n_evals`` counts forwards per example; ``delta`` None.
    """
    if replacement not in REPLACEMENTS:
        raise ValueError(f"replacement must be one of {', '.join(map(repr, REPLACEMENTS))}, got {replacement!r}")
    for name, v in (("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    prep, tgt, cont, batch = setup(
        model, inputs, target, tokenizer, "zeros" if replacement == "delete" else replacement, layer
    )
    region = prep.attributable.cpu()
    if replacement == "delete":
        specials = torch.tensor(sorted(special_ids(model, tokenizer)), dtype=torch.long)
        region = region & ~torch.isin(prep.ids.cpu(), specials)
    pairs = _windows(region, window, stride)
    bsz, t, _d = prep.x.shape
    g = tgt.n_out
    chunk = rows_per_chunk(model, prep, 1, batch_size)
    rows = torch.arange(bsz)
    sums = torch.zeros(bsz, g, t, dtype=torch.float64)
    counts = torch.zeros(bsz, t, dtype=torch.float64)
    with (
        gradient_mode(model),
        hooks_fire(model),
        torch.no_grad(),
        progress_bar(progress, bsz + len(pairs), "occlusion") as bar,
    ):
        fx = (
            torch.cat(
                [
                    forward_rows(model, prep, tgt, prep.x[sub.to(prep.device)].to(prep.dtype), sub, 1, resolve_at=0)
                    for sub in rows.split(chunk)
                ]
            )
            .cpu()
            .double()
        )
        bar.update(bsz)
        for i in range(0, len(pairs), chunk):
            part = pairs[i : i + chunk]
            ex = torch.tensor([e for e, _ in part])
            if replacement == "delete":
                sub_batch, sub_tgt = _deleted_batch(prep, tgt, part)
                out = model(**sub_batch)
                vals = sub_tgt(out, torch.arange(len(part)), sub_batch)
            else:
                point = prep.x[ex.to(prep.device)].clone()
                for j, (e, pos) in enumerate(part):
                    point[j, pos] = prep.b[e, pos]
                vals = forward_rows(model, prep, tgt, point.to(prep.dtype), ex, 1)
            drop = fx[ex] - vals.cpu().double()  # (N, G)
            for j, (e, pos) in enumerate(part):
                sums[e, :, pos] += drop[j][:, None]
                counts[e, pos] += 1
            bar.update(len(part))
    scores = (sums / counts.clamp_min(1)[:, None]).float().movedim(1, 0).to(prep.device)  # (G, B, T)
    n_evals = 1 + np.bincount([e for e, _ in pairs], minlength=bsz)
    return assemble(prep, tgt, cont, batch, scores, f"occlusion/{replacement}", n_evals, value=fx.float())
