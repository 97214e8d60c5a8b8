"""Activation patching: which module, at which position, carries the information that makes the
clean run differ from the corrupted one?

Run the *corrupted* input, but restore one module's output at one position to its value in the
*clean* run, and measure a metric (e.g. the logit difference between the right and the wrong
answer). A large recovery localises the computation (Meng et al. 2022, "causal tracing"; Wang et
al. 2023, IOI). ``effects[m, p] = metric(patched) - metric(corrupted)``; ``recovered`` divides by
``metric(clean) - metric(corrupted)`` (1 = fully restored).

Encoder-decoders run two sequences: encoder modules are patched along the input tokens, decoder
modules along the decoder tokens, each module along the sequence its output has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .._internal.hooks import first_tensor, hooks, replace_first
from .._internal.inputs import as_inputs
from .._internal.modes import device_of, eval_mode
from ..adapters.layout import ROLES, check_module, find_layout, require_support, resolve_role
from ..adapters.modules import hooks_fire

__all__ = ["PatchResult", "logit_diff", "patch"]


@dataclasses.dataclass
class PatchResult:
    """Output of :func:`patch`.

    Attributes
    ----------
    modules : list of str, length M
    positions : numpy.ndarray of int64, shape (P,)
        Patched positions (one column each); ``[-1]`` for ``positions="joint"`` (all at once).
    values : numpy.ndarray of float64, shape (M, P)
        Metric of each patched run; NaN where a module's sequence is shorter than the position
        (an encoder-decoder's shorter stack).
    effects : numpy.ndarray of float64, shape (M, P)
        ``values - corrupted_metric``.
    clean_metric, corrupted_metric : float
    tokens : list of str or None
        Clean input tokens of batch row 0 (with a tokenizer).
    """

    modules: list[str]
    positions: np.ndarray
    values: np.ndarray
    effects: np.ndarray
    clean_metric: float
    corrupted_metric: float
    tokens: list[str] | None = None

    @property
    def recovered(self) -> np.ndarray:
        """(M, P) share of the clean-corrupted gap restored by each patch (NaN if no gap)."""
        gap = self.clean_metric - self.corrupted_metric
        return self.effects / gap if gap != 0 else np.full_like(self.effects, np.nan)

    def plot(self, **kwargs: Any):
        """Heatmap of effects, modules × positions (see :func:`llmdbg.plot.patching_heatmap`)."""
        from ..plot.interventions import patching_heatmap

        return patching_heatmap(self, **kwargs)


def logit_diff(correct: int, wrong: int, position: int = -1) -> Callable[[Any], torch.Tensor]:
    """Metric: mean over the batch of ``logits[:, position, correct] - logits[:, position, wrong]``."""

    def metric(outputs: Any) -> torch.Tensor:
        logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
        return (logits[:, position, correct] - logits[:, position, wrong]).mean()

    return metric


def patch(
    model: torch.nn.Module,
    clean_inputs: Any,
    corrupted_inputs: Any,
    *,
    metric: Callable[[Any], Any],
    modules: str | Sequence[str] = "blocks",
    positions: str | Sequence[int] = "all",
    tokenizer: Any = None,
    progress: bool = True,
) -> PatchResult:
    """Restore clean activations into the corrupted run, one (module, position) at a time.

    Parameters
    ----------
    model : torch.nn.Module
    clean_inputs, corrupted_inputs : dict of tensors, input_ids (B, T), or text with ``tokenizer``
        Must have the same shape (B, T), and encoder-decoders the same ``decoder_input_ids`` shape
        too: positions are compared one to one.
    metric : callable
        ``metric(outputs) -> scalar`` (tensor or float; a tensor with several elements is
        averaged), e.g. :func:`logit_diff`.
    modules : str or sequence of str
        A role of :func:`llmdbg.adapters.layout.resolve_role` (``"blocks"``: the residual stream after each
        block, every layer of a hybrid included; ``"attention"``, ``"mlp"``) or explicit module names.
        Each module's output (or the first element of its output tuple) must have shape
        (B, T, ...), T being the length of the sequence it runs on (input or decoder tokens).
    positions : "all", "joint" or sequence of int
        ``"all"``: every position separately (P = the longest module sequence); ``"joint"``: all
        positions at once (P = 1); or the listed positions, each separately (negative ones count
        from the end, and need all modules to run on sequences of one length).
    progress : bool
        tqdm bar over the M · P patched runs.

    Returns
    -------
    PatchResult

    Raises
    ------
    ValueError
        Inputs of different shapes, an unknown role, positions out of range, a module output
        that is not (B, T, ...) for the input or decoder sequence.
    """
    from tqdm.auto import tqdm

    check_module(model)
    require_support(model, "patch")
    dev = device_of(model)
    clean = as_inputs(clean_inputs, tokenizer, name="clean_inputs", device=dev)
    corrupt = as_inputs(corrupted_inputs, tokenizer, name="corrupted_inputs", device=dev)
    lengths = _stream_lengths(clean, corrupt)
    names = _module_names(model, modules)

    cache: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            cache[name] = first_tensor(output).detach().clone()

        return hook

    def scalar(outputs) -> float:
        v = metric(outputs)
        return float(v.float().mean()) if isinstance(v, torch.Tensor) else float(np.mean(v))

    with eval_mode(model), torch.no_grad(), hooks_fire(model):
        with hooks(model, forward={n: keep(n) for n in names}):
            clean_metric = scalar(model(**clean))
        # Longformer's and LED's encoder blocks run on the input padded to the attention window:
        # only the first T positions are tokens (the model cuts the rest), so only those are patched.
        tokens = lengths.get("input tokens", (0, None))[1]
        layout = find_layout(model) if tokens is not None else None
        shapes = {n: layout.unpad(n, cache[n], tokens).shape if layout else cache[n].shape for n in cache}
        for n in names:
            missing = n not in cache
            if missing or cache[n].dim() < 2 or (shapes[n][0], shapes[n][1]) not in lengths.values():
                got = "was not called by the forward" if missing else f"outputs shape {tuple(cache[n].shape)}"
                want = " or ".join(f"({b}, {t}, ...) for {k}" for k, (b, t) in lengths.items())
                raise ValueError(f"module {n!r} {got}; patching needs (B, T, ...) = {want}")
        sizes = [int(shapes[n][1]) for n in names]
        pos = _positions(positions, max(sizes), uniform=len(set(sizes)) == 1)
        values = np.full((len(names), len(pos)), np.nan, dtype=np.float64)
        corrupted_metric = scalar(model(**corrupt))
        runs = sum(p < size for size in sizes for p in pos)
        bar = tqdm(total=runs, desc="patching", disable=None if progress else True, leave=False)
        with bar:
            for m, name in enumerate(names):
                for j, p in enumerate(pos):
                    if p >= sizes[m]:
                        continue  # a shorter sequence (an encoder-decoder's other stack)
                    sl = slice(None) if p < 0 else slice(p, p + 1)

                    def restore(module, args, output, name=name, sl=sl):
                        h = first_tensor(output).clone()
                        h[:, sl] = cache[name][:, sl].to(h.dtype)
                        return replace_first(output, h)

                    with hooks(model, forward={name: restore}):
                        values[m, j] = scalar(model(**corrupt))
                    bar.update(1)
    tokens = None
    if tokenizer is not None and "input_ids" in clean:
        tokens = tokenizer.convert_ids_to_tokens(clean["input_ids"][0].tolist())
    return PatchResult(
        modules=names,
        positions=np.asarray(pos, dtype=np.int64),
        values=values,
        effects=values - corrupted_metric,
        clean_metric=clean_metric,
        corrupted_metric=corrupted_metric,
        tokens=tokens,
    )


def _module_names(model, modules) -> list[str]:
    if isinstance(modules, str):
        if modules in ROLES:
            return resolve_role(model, modules)
        modules = [modules]
    names = list(modules)
    known = dict(model.named_modules())
    for n in names:
        if n not in known:
            raise ValueError(
                f"modules: {n!r} is neither a role ({', '.join(ROLES)}) nor a module of {type(model).__name__}"
            )
    if not names:
        raise ValueError("modules is empty")
    return names


def _stream_lengths(clean: dict, corrupt: dict) -> dict[str, tuple[int, int]]:
    """(B, T) per input sequence (input and, for encoder-decoders, decoder tokens), checked equal
    between the clean and corrupted inputs."""
    lengths = {}
    for stream, keys in (("input tokens", ("input_ids", "inputs_embeds")), ("decoder tokens", _DECODER_KEYS)):
        shapes = []
        for batch in (clean, corrupt):
            x = next((batch[k] for k in keys if isinstance(batch.get(k), torch.Tensor)), None)
            shapes.append(None if x is None or x.dim() < 2 else (int(x.shape[0]), int(x.shape[1])))
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"clean_inputs has {stream} of shape {shapes[0]} but corrupted_inputs has {shapes[1]}; "
                "patching compares positions one to one: pad or truncate both to the same length"
            )
        if shapes[0] is not None:
            lengths[stream] = shapes[0]
    return lengths


_DECODER_KEYS = ("decoder_input_ids", "decoder_inputs_embeds")


def _positions(positions, t: int, uniform: bool = True) -> list[int]:
    if isinstance(positions, str):
        if positions == "all":
            return list(range(t))
        if positions == "joint":
            return [-1]
        raise ValueError(f"positions must be 'all', 'joint' or a sequence of ints, got {positions!r}")
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise TypeError(f"positions must hold ints, got {p!r}")
        if p < 0 and not uniform:
            raise ValueError(
                f"position {p} counts from the end, which is ambiguous when the modules run on sequences of "
                "different lengths (an encoder-decoder's input and decoder tokens); pass positions >= 0"
            )
        q = int(p) + (t if p < 0 else 0)
        if not 0 <= q < t:
            raise ValueError(f"position {p} is out of range for inputs of length {t}")
        out.append(q)
    if not out:
        raise ValueError("positions is empty")
    return out
