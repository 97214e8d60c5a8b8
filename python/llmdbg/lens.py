"""Logit lens: what would the model predict if it stopped after layer l?

nostalgebraist (2020) read each layer's residual stream h_l through the model's own output map,
``W_U · LN_f(h_l)``, and found that predictions sharpen layer by layer. :func:`logit_lens` does
this for any Hugging Face causal LM (final norm + unembedding) or masked-LM encoder (the MLM
head), found by :func:`llmdbg.find_unembedding`.

Row 0 is the embedding output (the input of block 0), row l the output of block l. The last row
is the model's own prediction: it is computed from the last block's output through the final
norm exactly once, so it equals the model's logits (Hugging Face's ``hidden_states[-1]`` is
already normalised for GPT-2 and Llama; it is not used here, so nothing is normalised twice).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ._internal.hooks import first_tensor
from ._internal.inputs import as_inputs, token_shape
from ._internal.modes import device_of, eval_mode
from ._internal.progress import progress_iter
from .adapters.layout import check_module, find_layout, require_support
from .adapters.modules import hooks_fire
from .adapters.unembedding import find_unembedding

__all__ = ["LensResult", "logit_lens"]


@dataclasses.dataclass
class LensResult:
    """Output of :func:`logit_lens`. R = number of rows read (n_layers + 1 by default).

    Attributes
    ----------
    layers : numpy.ndarray of int64, shape (R,)
        Row indices: 0 = embeddings, l = after block l.
    top_ids : numpy.ndarray of int64, shape (R, B, T, k)
    top_probs : numpy.ndarray of float32, shape (R, B, T, k)
        Softmax probabilities (computed in float32) of ``top_ids``.
    top_tokens : numpy.ndarray of str, shape (R, B, T, k), or None without a tokenizer
    input_tokens : list of list of str, or None without a tokenizer
    target_rank : numpy.ndarray of int64, shape (R, B, T), or None
        Rank of the target token (1 = top prediction); -1 where there is no target.
    target_prob : numpy.ndarray of float32, shape (R, B, T), or None
        Probability of the target token; NaN where there is no target.
    attention_mask : numpy.ndarray, shape (B, T)
    kind : str
        ``"causal"`` or ``"masked_lm"``.
    """

    layers: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    top_tokens: np.ndarray | None
    input_tokens: list[list[str]] | None
    target_rank: np.ndarray | None
    target_prob: np.ndarray | None
    attention_mask: np.ndarray
    kind: str

    def plot(self, batch: int = 0, **kwargs: Any):
        """Layers × positions grid, top token in each cell coloured by its probability
        (see :func:`llmdbg.plot.logit_lens`)."""
        from .plot.lens import logit_lens as plot_lens

        return plot_lens(self, batch=batch, **kwargs)


def logit_lens(
    model: torch.nn.Module,
    inputs: Any,
    *,
    tokenizer: Any = None,
    top_k: int = 5,
    layers: Any = None,
    target: Any = None,
    progress: bool = True,
) -> LensResult:
    """Decode every layer's hidden state with the model's own final norm and unembedding.

    Parameters
    ----------
    model : transformers model with a language-model head
        A causal LM (``AutoModelForCausalLM``: GPT-2, Llama, Mistral, Qwen2, GPT-NeoX, OPT, ...) or
        a masked LM (``AutoModelForMaskedLM``: BERT, RoBERTa, DistilBERT, ELECTRA, ModernBERT, ...).
        Logit scaling and soft-capping of the head are applied as the model applies them.
    inputs : dict of tensors, input_ids tensor (B, T), or str / list of str (with ``tokenizer``)
    tokenizer : transformers tokenizer, optional
        Encodes text inputs and decodes ``top_tokens``.
    top_k : int
        Predictions kept per cell.
    layers : sequence of int, optional
        Rows to read, each in [0, n_layers] (negative counts from the end); default all.
    target : int, str, array of shape (B, T), or "next", optional
        Token whose rank and probability are tracked: one id (or a single-token string with
        ``tokenizer``) for every position, one id per position (negative: none), or ``"next"``:
        the next input token (causal LMs; the last position has none).
    progress : bool
        Show a progress bar (off when output is not interactive).

    Returns
    -------
    LensResult

    Raises
    ------
    ValueError
        A layer is out of range, the model has no unembedding, or ``top_k`` is not positive; the
        last row does not reproduce the model's own logits (a head llmdbg does not know), or the
        blocks do not see one state per input token (they pad the sequence, or never run).
    """
    check_module(model)
    require_support(model, "lens")
    unembed = find_unembedding(model)
    layout = find_layout(model)
    n_layers = len(layout.blocks)
    rows = _rows(layers, n_layers)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    inputs = as_inputs(inputs, tokenizer, device=device_of(model))
    b, t = token_shape(inputs)
    targets = _targets(target, inputs, tokenizer, b, t)

    states: dict[int, torch.Tensor] = {}

    def pre(module, args, kwargs):
        states[0] = (args[0] if args else kwargs["hidden_states"]).detach()

    def post(i):
        def hook(module, args, output):
            states[i] = first_tensor(output).detach()

        return hook

    blocks = [model.get_submodule(n) for n in layout.blocks]
    first = model.get_submodule(layout.stack_input(next(iter(layout.stacks))))  # XLM: attentions[0]
    handles = [first.register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [blk.register_forward_hook(post(i + 1)) for i, blk in enumerate(blocks)]
    try:
        with eval_mode(model), torch.no_grad(), hooks_fire(model):  # a compiled graph skips new hooks
            outputs = model(**inputs)
            _check_states(model, states, n_layers + 1, b, t)
            final = _apply(unembed, states[n_layers], model, layout.family)  # the last row: checked, reused
            _check_reproduces_logits(model, layout.family, final, outputs, inputs)
            ids, probs, ranks, tprobs = [], [], [], []
            for r in progress_iter(rows, progress, "logit lens", unit="layer"):
                logits = (final if r == n_layers else unembed.apply(states[r])).float()
                vocab = logits.shape[-1]
                p = torch.softmax(logits, dim=-1)
                k = min(top_k, vocab)
                tp, ti = p.topk(k, dim=-1)
                ids.append(ti.cpu().numpy())
                probs.append(tp.cpu().numpy())
                if targets is not None:
                    if int(targets.max()) >= vocab:
                        raise ValueError(f"target id {int(targets.max())} is outside the vocabulary of size {vocab}")
                    valid = targets >= 0
                    tgt = targets.clamp(min=0).to(p.device)
                    pt = p.gather(-1, tgt[..., None])[..., 0]
                    rank = (p > pt[..., None]).sum(-1) + 1
                    ranks.append(torch.where(valid, rank.cpu(), -1).numpy())
                    tprobs.append(torch.where(valid, pt.cpu(), torch.nan).numpy().astype(np.float32))
    finally:
        for h in handles:
            h.remove()
    top_ids = np.stack(ids).astype(np.int64)
    top_tokens = input_tokens = None
    if tokenizer is not None:
        flat = tokenizer.convert_ids_to_tokens(top_ids.reshape(-1).tolist())
        top_tokens = np.array(flat, dtype=object).reshape(top_ids.shape)
        input_tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in inputs["input_ids"].cpu()]
    mask = inputs.get("attention_mask")
    mask = np.ones((b, t), dtype=np.int64) if mask is None else mask.cpu().numpy()
    return LensResult(
        layers=np.asarray(rows, dtype=np.int64),
        top_ids=top_ids,
        top_probs=np.stack(probs).astype(np.float32),
        top_tokens=top_tokens,
        input_tokens=input_tokens,
        target_rank=np.stack(ranks).astype(np.int64) if targets is not None else None,
        target_prob=np.stack(tprobs) if targets is not None else None,
        attention_mask=mask,
        kind=unembed.kind,
    )


def _rows(layers: Any, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers + 1))
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layers must hold ints, got {layer!r}")
        r = int(layer) + (n_layers + 1 if layer < 0 else 0)
        if not 0 <= r <= n_layers:
            raise ValueError(
                f"layer {layer} is out of range: the model has {n_layers} blocks, so rows are "
                f"0 (embeddings) .. {n_layers} (or -{n_layers + 1} .. -1)"
            )
        out.append(r)
    if not out:
        raise ValueError("layers is empty")
    return out


def _targets(target: Any, inputs: dict, tokenizer: Any, b: int, t: int) -> torch.Tensor | None:
    if target is None:
        return None
    if isinstance(target, str) and target == "next":
        ids = inputs["input_ids"].cpu()
        out = torch.full((b, t), -1, dtype=torch.long)
        out[:, :-1] = ids[:, 1:]
        mask = inputs.get("attention_mask")
        if mask is not None:  # no target where the next position is padding
            out[:, :-1][mask[:, 1:].cpu() == 0] = -1
        return out
    if isinstance(target, str):
        if tokenizer is None:
            raise TypeError("target is a string; pass tokenizer= to convert it to an id")
        ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"target {target!r} is {len(ids)} tokens; pass a single token (or its id)")
        return torch.full((b, t), ids[0], dtype=torch.long)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if target < 0:
            raise ValueError(f"target id must be >= 0, got {target}")
        return torch.full((b, t), int(target), dtype=torch.long)
    arr = torch.as_tensor(np.asarray(target), dtype=torch.long)
    if tuple(arr.shape) != (b, t):
        raise ValueError(f"target has shape {tuple(arr.shape)}; expected ({b}, {t}) like the inputs, one id, or 'next'")
    return arr


def _check_states(model: torch.nn.Module, states: dict[int, torch.Tensor], n_rows: int, b: int, t: int) -> None:
    """Every row must be one state per input token: a model that pads or pools inside its blocks
    (Longformer pads to its attention window) would misalign rows and tokens."""
    if len(states) < n_rows:
        missing = [r for r in range(n_rows) if r not in states]
        raise ValueError(
            f"logit lens: the blocks llmdbg found in {type(model).__name__} did not all run in its forward "
            f"(no state for rows {missing}); it cannot read the residual stream after every block"
        )
    longer = {h.shape[1] for h in states.values() if h.dim() == 3 and h.shape[0] == b and h.shape[1] > t}
    if len(longer) == 1 and all(h.dim() == 3 and h.shape[1] in (t, *longer) for h in states.values()):
        # Longformer pads on the right to a multiple of its window and cuts its output the same way;
        # the last row's check against the model's own logits confirms the alignment.
        for r in states:
            states[r] = states[r][:, :t]
    for r, h in states.items():
        if h.dim() != 3 or tuple(h.shape[:2]) != (b, t):
            raise ValueError(
                f"logit lens: block {r} of {type(model).__name__} sees hidden states of shape {tuple(h.shape)}, "
                f"not (batch, tokens, hidden) = ({b}, {t}, ...) like the inputs (the model pads or reshapes the "
                "sequence inside its blocks); the logit lens cannot align its rows with the input tokens"
            )


def _apply(unembed: Any, h: torch.Tensor, model: torch.nn.Module, family: str) -> torch.Tensor:
    """The head on the last block's output; a head that cannot take it (Reformer's two concatenated
    streams, a projection of another width) is refused in words, not with a torch shape error."""
    try:
        return unembed.apply(h)
    except RuntimeError as e:
        raise ValueError(
            f"logit lens: {type(model).__name__}'s final norm and unembedding (family {family!r}) cannot be "
            f"applied to its last block output of shape {tuple(h.shape)} ({e}); the model transforms the "
            "hidden states between its last block and its head in a way llmdbg does not know"
        ) from e


def _check_reproduces_logits(
    model: torch.nn.Module, family: str, ours: torch.Tensor, outputs: Any, inputs: dict[str, Any]
) -> None:
    """Refuse to return a lens that cannot reproduce the model's own logits from the last block.

    A head that post-processes its output in a way llmdbg does not know (a scale, a cap, a
    projection after the last block) would otherwise give a plausible, wrong lens on every row.
    """
    theirs = getattr(outputs, "logits", None)
    if not isinstance(theirs, torch.Tensor) or theirs.dim() != 3:
        return  # the model returns no per-position logits
    mask = inputs.get("attention_mask")
    real = torch.ones(ours.shape[:2], dtype=torch.bool, device=ours.device) if mask is None else mask.bool()
    if theirs.shape[0] == ours.shape[0] and 0 < theirs.shape[1] < ours.shape[1]:
        # logits_to_keep: the model kept only the last positions; compare those
        ours, real = ours[:, -theirs.shape[1] :], real[:, -theirs.shape[1] :]
    if theirs.shape != ours.shape:
        raise ValueError(
            f"logit lens: {type(model).__name__}'s logits have shape {tuple(theirs.shape)}, but its final norm and "
            f"unembedding give {tuple(ours.shape)} (family {family!r}); llmdbg cannot reproduce the model's own "
            "logits, so every row of the lens would be wrong"
        )
    a, b = ours.float()[real], theirs.float()[real.to(theirs.device)]
    low_precision = theirs.dtype in (torch.float16, torch.bfloat16)
    tol = (2e-2 if low_precision else 1e-4) * (1.0 + float(b.abs().max()) if b.numel() else 1.0)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    if diff > tol:
        raise ValueError(
            f"logit lens: llmdbg cannot reproduce {type(model).__name__}'s own logits (family {family!r}) from "
            f"its last block output through the final norm and unembedding (max abs difference {diff:.3g}); "
            "the model post-processes its hidden states or logits in a way llmdbg does not know, so every "
            "row of the lens would be wrong"
        )
