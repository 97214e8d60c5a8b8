"""What a run computes for each example: one function per batch, shared by every engine.

:func:`compute_batch` runs the model once on a padded batch (inside one ``llmdbg.capture`` that
records what the forward tasks need), then the gradient and lens tasks, and returns one list per
output column with an entry per example, plus the cached activations. The local engine and the
Ray actors call this same function, which is why their records are identical.

Per-example statistics are taken over the example's real tokens only (never its padding), so an
example's record does not depend on what it was batched with beyond floating-point reassociation
in the model itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..adapters.layout import resolve_role
from ..adapters.task import task_type
from ..attribution import input_x_gradient, integrated_gradients, saliency
from ..lens import logit_lens
from ..tracing import capture, summarize

__all__ = ["TASKS", "BatchOutput", "Plan", "compute_batch"]

TASKS = ("stats", "embedding", "attention", "loss", "attribution", "lens", "activations")
POOLINGS = ("mean", "cls", "last")
POSITIONS = ("all", "last", "mean")
ACTIVATION_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ATTENTION_STATS = ("entropy", "max_prob", "sink_mass", "special_mass")
STATS = ("mean", "std", "absmax", "nan", "inf")
_METHODS = {"saliency": saliency, "input_x_gradient": input_x_gradient, "integrated_gradients": integrated_gradients}


@dataclasses.dataclass(frozen=True)
class Plan:
    """The tasks of a run and their options (validated by :func:`make_plan`).

    Attributes
    ----------
    tasks : tuple of str
        A subset of :data:`TASKS`, in the order given.
    pooling : str
        ``"mean"`` (over real tokens), ``"cls"`` (first real token) or ``"last"`` (last real token).
    embedding_layer : int
        Index into the trace's hidden states (0 = embedding output, -1 = last block).
    top_k : int
        Tokens kept per example by ``"attribution"``.
    attribution_method : str
        ``"saliency"``, ``"input_x_gradient"`` or ``"integrated_gradients"``.
    target : Any
        The attribution target: ``"predicted"`` or anything :func:`llmdbg.saliency` accepts.
    activation_modules : tuple of str
        Module names or roles (``"blocks"``, ``"mlp"``, ...) whose outputs ``"activations"`` caches.
    activation_positions : str
        ``"all"`` real tokens, the ``"last"`` real token, or their ``"mean"``.
    activation_dtype : str
        ``"float32"``, ``"float16"`` or ``"bfloat16"``: the dtype written to safetensors.
    """

    tasks: tuple[str, ...]
    pooling: str = "mean"
    embedding_layer: int = -1
    top_k: int = 5
    attribution_method: str = "saliency"
    target: Any = "predicted"
    activation_modules: tuple[str, ...] = ("blocks",)
    activation_positions: str = "all"
    activation_dtype: str = "float32"

    def options(self) -> dict[str, Any]:
        """The options that change records (the job's identity in the manifest), as JSON values."""
        out = dataclasses.asdict(self)
        del out["tasks"]  # the job records them on their own
        out["target"] = self.target if isinstance(self.target, (str, int, type(None))) else repr(self.target)
        return out


def make_plan(tasks: Any, **options: Any) -> Plan:
    """Validate ``tasks`` and the task options; raise ValueError/TypeError naming the bad one."""
    if isinstance(tasks, str):
        tasks = (tasks,)
    if not isinstance(tasks, Sequence) or not tasks:
        raise TypeError(f"tasks must be a non-empty sequence of task names from {TASKS}; got {tasks!r}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"tasks: unknown task(s) {unknown}; choose from {TASKS}")
    plan = Plan(tuple(dict.fromkeys(tasks)), **options)
    _check_choice("pooling", plan.pooling, POOLINGS)
    _check_choice("activation_positions", plan.activation_positions, POSITIONS)
    _check_choice("activation_dtype", plan.activation_dtype, tuple(ACTIVATION_DTYPES))
    _check_choice(
        "attribution_method", plan.attribution_method, ("saliency", "input_x_gradient", "integrated_gradients")
    )
    if isinstance(plan.top_k, bool) or not isinstance(plan.top_k, int) or plan.top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {plan.top_k!r}")
    if isinstance(plan.embedding_layer, bool) or not isinstance(plan.embedding_layer, int):
        raise TypeError(
            f"embedding_layer must be an int (an index into the hidden states), got {plan.embedding_layer!r}"
        )
    mods = plan.activation_modules
    if isinstance(mods, str) or not all(isinstance(m, str) for m in mods) or not mods:
        raise TypeError(f"activation_modules must be a non-empty tuple of module names or roles, got {mods!r}")
    return plan


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclasses.dataclass
class BatchOutput:
    """What :func:`compute_batch` returns for B examples.

    Attributes
    ----------
    columns : dict of str to list
        Output column -> B values (scalars, or 1-D numpy arrays for vector columns).
    activations : dict of str to list of torch.Tensor
        Module name -> B tensors ``(n_i, D)`` in the run's activation dtype (``n_i`` = real tokens
        with ``activation_positions="all"``, else 1).
    shapes : dict of str to tuple of int
        The logical shape of each flattened vector column (``attention_*``: ``(L, H)``).
    """

    columns: dict[str, list[Any]]
    activations: dict[str, list[torch.Tensor]]
    shapes: dict[str, tuple[int, ...]]


def compute_batch(
    model: torch.nn.Module,
    tokenizer: Any,
    batch: dict[str, torch.Tensor],
    plan: Plan,
    labels: list[Any] | None = None,
) -> BatchOutput:
    """Run every task of ``plan`` on one padded batch.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode (the engines take care of it).
    tokenizer : transformers tokenizer
    batch : dict of str to torch.Tensor
        ``input_ids`` and ``attention_mask`` ``(B, T)`` (and whatever else the tokenizer returned),
        on the model's device.
    plan : Plan
    labels : list, optional
        B labels (None entries for examples without one).

    Returns
    -------
    BatchOutput
    """
    if task_type(model) == "seq2seq":  # its hidden states and maps mix encoder and decoder lengths
        raise ValueError(
            f"llmdbg.run does not support encoder-decoder models ({type(model).__name__}): its per-example "
            "records are defined over one token sequence; run the encoder alone (model.get_encoder()) or a "
            "decoder-only model"
        )
    tasks = set(plan.tasks)
    mask = batch["attention_mask"].bool().cpu()
    b = mask.shape[0]
    columns: dict[str, list[Any]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    acts: dict[str, list[torch.Tensor]] = {}

    modules = _activation_names(model, plan) if "activations" in tasks else None
    trace, out = _forward(model, tokenizer, batch, tasks, modules)
    if trace is not None:
        if "stats" in tasks:
            columns.update(_stats(trace.hidden_states, mask))
        if "embedding" in tasks:
            columns["embedding"] = list(_pool(trace.hidden_states[plan.embedding_layer], mask, plan.pooling))
        if "attention" in tasks:
            cols, shape = _attention(trace.attention_stats, mask)
            columns.update(cols)
            shapes.update(dict.fromkeys(cols, shape))
        if "activations" in tasks:
            acts = _activations(trace, modules or [], mask, plan)
    if "loss" in tasks:
        columns.update(_loss(model, tokenizer, batch, out, mask, labels))
    del trace, out  # before the lens and gradient passes: their memory peak is their own
    if "lens" in tasks:
        columns.update(_lens(model, tokenizer, batch, mask))
    if "attribution" in tasks:
        columns.update(_attribute(model, tokenizer, batch, mask, plan))
    for name, values in columns.items():
        if len(values) != b:  # a task's bug, not the user's data
            raise AssertionError(f"column {name!r} has {len(values)} entries for {b} examples")
    return BatchOutput(columns, acts, shapes)


def _forward(
    model: torch.nn.Module, tokenizer: Any, batch: dict[str, torch.Tensor], tasks: set[str], modules: list[str] | None
) -> tuple[Any, Any]:
    """The one forward pass of the forward tasks, inside a capture of what they read:
    ``(trace or None, model output or None)``."""
    hidden = bool(tasks & {"stats", "embedding"})
    with torch.no_grad():
        if modules or hidden or "attention" in tasks:
            with capture(
                model,
                modules,
                hidden_states=hidden,
                attentions="stats" if "attention" in tasks else False,
                stats=False,
                tokenizer=tokenizer,
            ) as trace:
                out = model(**batch)
            return trace, out
        if "loss" in tasks:
            return None, model(**batch)
    return None, None


# -- the tasks -------------------------------------------------------------------------------------


def _stats(hidden_states: list[np.ndarray], mask: torch.Tensor) -> dict[str, list[Any]]:
    """Per example and hidden state (0 = embedding output, then every block): mean, std
    (population) and absmax of the finite entries at real tokens, and NaN / Inf counts, from the
    C++ one-pass kernel of :func:`llmdbg.summarize` (float64 accumulation); NaN where an example
    has no finite entry."""
    m = mask.numpy()
    b, n_layers = m.shape[0], len(hidden_states)
    per = {k: np.empty((b, n_layers), np.int64 if k in ("nan", "inf") else np.float32) for k in STATS}
    rows = [_real_rows(m[i]) for i in range(b)]
    for layer, h in enumerate(hidden_states):
        _check_tokens(h, m, f"hidden state {layer}")
        for i, sel in enumerate(rows):
            st = summarize(h[i, sel], n_jobs=1)  # one small slice: threads would cost more than they save
            per["mean"][i, layer], per["std"][i, layer], per["absmax"][i, layer] = st.mean, st.std, st.absmax
            per["nan"][i, layer], per["inf"][i, layer] = st.nan_count, st.inf_count
    out: dict[str, list[Any]] = {f"stats_{k}": list(v) for k, v in per.items()}
    bad = per["nan"] + per["inf"]  # (B, L + 1)
    out["first_nonfinite_layer"] = [int(np.argmax(r)) if r.any() else -1 for r in bad]
    return out


def _check_tokens(h: np.ndarray, mask: np.ndarray, what: str) -> None:
    """Refuse a tensor that is not (B, T, D) over the input's tokens (Funnel pools the sequence,
    for example): reading it with the input's mask would give silently wrong numbers."""
    if h.ndim != 3 or h.shape[:2] != mask.shape:
        raise ValueError(
            f"{what} has shape {h.shape}, not (B, T, D) = ({mask.shape[0]}, {mask.shape[1]}, D) over the input's "
            "tokens; per-example statistics and pooling need one vector per input token"
        )


def _real_rows(mask_row: np.ndarray) -> slice | np.ndarray:
    """The real positions of one mask row: a slice (a view, no copy) when they are contiguous, as
    with left or right padding, else a boolean index."""
    real = np.flatnonzero(mask_row)
    if real.size and real[-1] - real[0] + 1 == real.size:
        return slice(int(real[0]), int(real[-1]) + 1)
    return mask_row.astype(bool)


def _pool(hidden: np.ndarray, mask: torch.Tensor, pooling: str) -> np.ndarray:
    """(B, T, D) -> (B, D) float32: the mean over real tokens (summed in float64), or the first
    or last real token."""
    m = mask.numpy()
    _check_tokens(hidden, m, "the pooled hidden state")
    out = np.empty((hidden.shape[0], hidden.shape[2]), np.float32)
    for i in range(hidden.shape[0]):
        real = np.flatnonzero(m[i])
        if pooling == "mean":
            sel = _real_rows(m[i])
            out[i] = hidden[i, sel].sum(0, dtype=np.float64) / max(real.size, 1)
        else:
            out[i] = hidden[i, (real[0] if pooling == "cls" else real[-1]) if real.size else 0]
    return out


def _attention(stats: dict[int, dict[str, np.ndarray]], mask: torch.Tensor) -> tuple[dict[str, list[Any]], tuple]:
    """Per example, layer and head: the mean over real queries of each per-query statistic
    (entropy in nats, max_prob, sink_mass, special_mass), flattened from (L, H)."""
    layers = sorted(stats)
    out: dict[str, list[Any]] = {}
    shape: tuple[int, ...] = ()
    real = mask.numpy()[:, None, :]  # (B, 1, T)
    for name in ATTENTION_STATS:
        per_layer = []
        for layer in layers:
            s = stats[layer][name]  # (B, H, T_q)
            v = np.where(real, s, np.nan).astype(np.float64)
            with np.errstate(invalid="ignore"):
                cnt = np.isfinite(v).sum(-1)
                per_layer.append(np.where(cnt > 0, np.nansum(v, -1) / np.maximum(cnt, 1), np.nan))
        arr = np.stack(per_layer, 1).astype(np.float32)  # (B, L, H)
        shape = arr.shape[1:]
        out[f"attention_{name}"] = list(arr.reshape(arr.shape[0], -1))
    return out, shape


def _loss(
    model: torch.nn.Module,
    tokenizer: Any,
    batch: dict[str, torch.Tensor],
    out: Any,
    mask: torch.Tensor,
    labels: list[Any] | None,
) -> dict[str, list[Any]]:
    kind = task_type(model)
    if kind not in ("causal-lm", "classifier"):
        raise ValueError(
            f"task 'loss' needs a causal LM or a sequence classifier; this model is a {kind} "
            f"({type(model).__name__}): drop 'loss' or load it with AutoModelForCausalLM / "
            "AutoModelForSequenceClassification"
        )
    logits = out.logits.detach().float().cpu()
    b = logits.shape[0]
    labels = labels if labels is not None else [None] * b
    if kind == "causal-lm":
        ids = batch["input_ids"].cpu()
        logp = torch.log_softmax(logits[:, :-1], -1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0].double()
        pair = mask[:, 1:] & mask[:, :-1]  # a real token predicted from a real one
        n = pair.sum(1)
        loss = torch.where(n > 0, (nll * pair).sum(1) / n.clamp_min(1), torch.nan)
        last = torch.where(mask, torch.arange(mask.shape[1]), -1).amax(1)
        pred = logits[torch.arange(b), last.clamp_min(0)].argmax(-1)
        text = [tokenizer.decode([int(p)]) if tokenizer is not None else str(int(p)) for p in pred]
        correct = [None if lab is None else str(t).strip() == str(lab).strip() for t, lab in zip(text, labels)]
        return {
            "loss": [float(v) for v in loss],
            "perplexity": [float(v) for v in loss.exp()],
            "prediction": [int(p) for p in pred],
            "prediction_text": text,
            "correct": correct,
        }
    if kind == "classifier":
        logp = torch.log_softmax(logits.double(), -1)
        pred = logp.argmax(-1)
        id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
        label2id = {str(v): int(k) for k, v in id2label.items()}
        losses, correct = [], []
        for i, lab in enumerate(labels):
            cls = _class_index(lab, label2id, logits.shape[-1])
            losses.append(float("nan") if cls is None else float(-logp[i, cls]))
            correct.append(None if cls is None else bool(int(pred[i]) == cls))
        return {
            "loss": losses,
            "prediction": [int(p) for p in pred],
            "prediction_text": [str(id2label.get(int(p), int(p))) for p in pred],
            "probability": [float(v) for v in logp.max(-1).values.exp()],
            "correct": correct,
        }
    raise AssertionError(f"unreachable: task type {kind}")


def _class_index(label: Any, label2id: dict[str, int], n: int) -> int | None:
    if label is None or (isinstance(label, float) and np.isnan(label)):
        return None
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if not 0 <= int(label) < n:
            raise ValueError(f"label {int(label)} is outside the model's {n} classes")
        return int(label)
    if str(label) in label2id:
        return label2id[str(label)]
    raise ValueError(f"label {label!r} is neither a class index nor one of the model's labels {sorted(label2id)}")


def _lens(model: torch.nn.Module, tokenizer: Any, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> dict:
    """Top-1 token of every layer's decoded hidden state at the last real position."""
    res = logit_lens(model, batch, tokenizer=tokenizer, top_k=1, progress=False)
    last = torch.where(mask, torch.arange(mask.shape[1]), -1).amax(1).clamp_min(0).numpy()
    rows = np.arange(mask.shape[0])
    ids = res.top_ids[:, rows, last, 0].T.astype(np.int64)  # (B, R)
    probs = res.top_probs[:, rows, last, 0].T.astype(np.float32)
    out: dict[str, list[Any]] = {"lens_top_ids": list(ids), "lens_top_probs": list(probs)}
    if res.top_tokens is not None:
        out["lens_top_tokens"] = [list(map(str, row)) for row in res.top_tokens[:, rows, last, 0].T]
    return out


def _attribute(
    model: torch.nn.Module, tokenizer: Any, batch: dict[str, torch.Tensor], mask: torch.Tensor, plan: Plan
) -> dict[str, list[Any]]:
    """The ``top_k`` tokens with the largest |score| per example (ties: the earlier position)."""
    method = _METHODS[plan.attribution_method]
    res = method(model, batch, target=plan.target, tokenizer=tokenizer, progress=False)
    scores = np.asarray(res.scores, dtype=np.float32)
    if scores.ndim != 2:
        raise ValueError(f"task 'attribution' needs one target per example; got scores of shape {scores.shape}")
    out: dict[str, list[Any]] = {"attribution_positions": [], "attribution_tokens": [], "attribution_scores": []}
    real = mask.numpy()
    for i in range(scores.shape[0]):
        pos = np.flatnonzero(real[i])
        order = pos[np.argsort(-np.abs(scores[i, pos]), kind="stable")][: plan.top_k]
        out["attribution_positions"].append(order.astype(np.int64))
        out["attribution_tokens"].append([res.tokens[i][j] for j in order])
        out["attribution_scores"].append(scores[i, order])
    if res.target is not None:
        out["attribution_target"] = [int(t) for t in np.asarray(res.target).reshape(-1)]
    return out


def _activation_names(model: torch.nn.Module, plan: Plan) -> list[str]:
    names: list[str] = []
    for m in plan.activation_modules:
        try:
            names.extend(resolve_role(model, m))
        except (ValueError, KeyError):
            names.append(m)  # a module name: capture checks it and names close ones
    return list(dict.fromkeys(names))


def _activations(trace: Any, modules: list[str], mask: torch.Tensor, plan: Plan) -> dict[str, list[torch.Tensor]]:
    dtype = ACTIVATION_DTYPES[plan.activation_dtype]
    out: dict[str, list[torch.Tensor]] = {}
    for name in modules:
        x = torch.from_numpy(trace.activations[name])
        if x.dim() != 3 or x.shape[:2] != mask.shape:
            raise ValueError(
                f"activations: module {name!r} returned shape {tuple(x.shape)}, not (B, T, D) = "
                f"({mask.shape[0]}, {mask.shape[1]}, D); choose modules on the residual stream"
            )
        if plan.activation_positions == "all":
            rows = [x[i, mask[i]] for i in range(x.shape[0])]
        else:
            pooled = _pool(x.numpy(), mask, "mean" if plan.activation_positions == "mean" else "last")
            rows = [torch.from_numpy(r[None].copy()) for r in pooled]
        out[name] = [r.to(dtype).contiguous() for r in rows]
    return out
