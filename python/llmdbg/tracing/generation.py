"""``capture`` around ``model.generate()``: what each generated token saw, stitched in order.

``generate()`` calls the model once for the prompt (the prefill, T_p positions) and once per new
token (one position, with the KV cache). Inside a capture, ``model.generate`` is wrapped (the
instance attribute, restored on exit) so that the capture knows which of its calls belong to the
generation, asks ``generate`` for the raw logits of every step, and returns to the caller exactly
what it asked for. :class:`Generation` then stitches the calls along the sequence axis: the
prefill's positions, then one per generated token, which is exactly one forward over
``sequences[:, :-1]`` (the last generated token is never fed back). Beam search reorders the KV
cache between steps; each returned sequence follows ``beam_indices`` through the calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .trace import Trace

__all__ = ["GenerateWrapper", "Generation"]

TOP_K = 5
_REQUESTED = ("output_scores", "output_logits")


class GenerateWrapper:
    """Replaces ``model.generate`` on the instance while a capture is open."""

    def __init__(
        self,
        model: torch.nn.Module,
        trace: Trace,
        marks: Callable[[], dict[str, Any]],
        on_generate: Callable[[str | None], None] = lambda _: None,
    ) -> None:
        self.model = model
        self._on_generate = on_generate  # "single" / "beams" while generate() runs, then None
        self.trace = trace
        self._marks = marks
        self._installed = False
        self._previous: Any = None
        self.active = True

    def __enter__(self) -> GenerateWrapper:
        original = getattr(self.model, "generate", None)
        if not callable(original):
            return self
        self._previous = self.model.__dict__.get("generate")
        self._installed = True

        def generate(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(*args, **kwargs)
            return self._generate(original, args, kwargs)

        setattr(self.model, "generate", generate)  # noqa: B010  (an instance attribute, removed on exit)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.active = False
        if not self._installed:
            return
        self._installed = False
        if self._previous is None:
            self.model.__dict__.pop("generate", None)
        else:
            setattr(self.model, "generate", self._previous)  # noqa: B010

    def _generate(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        config = kwargs.get("generation_config") or getattr(self.model, "generation_config", None)
        wants_dict = kwargs.get("return_dict_in_generate", getattr(config, "return_dict_in_generate", False))
        asked = {name: kwargs.get(name, getattr(config, name, False)) for name in _REQUESTED}
        # Raw logits give the step scores (and, under beam search, beam_indices).
        kwargs = {**kwargs, "return_dict_in_generate": True, "output_logits": True}
        before = self._marks()
        beams = int(kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1) > 1
        self._on_generate("beams" if beams else "single")
        try:
            out = original(*args, **kwargs)
        finally:
            self._on_generate(None)
        after = self._marks()
        prompt = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
        prompt = prompt if isinstance(prompt, torch.Tensor) else None
        mask = kwargs.get("attention_mask")
        gen = Generation(self.trace, out, before, after, prompt, mask)
        gen._unstitchable = _unstitchable(self.model, prompt, kwargs, gen)
        if getattr(getattr(self.model, "config", None), "is_encoder_decoder", False) and prompt is not None:
            gen._encoder = {"input_ids": prompt.detach().cpu()}  # sequences are the decoder's tokens
            if isinstance(mask, torch.Tensor):
                gen._encoder["attention_mask"] = mask.detach().cpu()
        self.trace._generations.append(gen)
        if not wants_dict:
            return out.sequences
        for name, field in (("output_scores", "scores"), ("output_logits", "logits")):
            if not asked[name] and hasattr(out, field):
                setattr(out, field, None)  # what the caller did not ask for
        return out


def _unstitchable(model: torch.nn.Module, prompt: torch.Tensor | None, kwargs: dict, gen: Generation) -> str | None:
    """Why this generation's calls do not add up to one forward over ``sequences[:, :-1]``, or None."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.25 renamed it "cache"
    length = getattr(cache, "get_seq_length", None)
    if callable(length) and int(length()) > 0:
        return "generate() continued a KV cache passed in, so its prefill saw only the uncached tokens"
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return None if prompt is not None else "the encoder's inputs were not passed as input_ids/inputs"
    if prompt is None or gen.prompt_length != prompt.shape[-1]:
        return "generate() was called without input_ids (e.g. inputs_embeds): sequences hold only the new tokens"
    return None


def _step_scores(
    logits: tuple[torch.Tensor, ...], chosen: torch.Tensor, rows: torch.Tensor | None, top_k: int
) -> dict[str, np.ndarray]:
    """Per step, from the raw logits (float32 softmax): the chosen token's probability, rank
    (1 = most likely), the entropy (nats) and the top-k. Steps of a finished beam are NaN / -1.
    All steps at once: (B, n, V) gathered from the (B', V) step logits."""
    n, b = len(logits), chosen.shape[0]
    k = min(top_k, logits[0].shape[-1])
    idx = torch.arange(b)[:, None].expand(b, n) if rows is None else rows  # (B, n) row of each step's batch
    ok = idx >= 0
    stacked = torch.stack(logits, 1)  # (B', n, V)
    z = stacked[idx.clamp_min(0).to(stacked.device), torch.arange(n, device=stacked.device)[None]].float()
    logp = torch.log_softmax(z, dim=-1)
    ids = chosen.to(z.device)[..., None]
    rank = ((z > z.gather(2, ids)).sum(-1) + 1).cpu()
    prob = logp.gather(2, ids)[..., 0].exp().cpu()
    entropy = (-(logp.exp() * logp).nan_to_num().sum(-1)).cpu()
    tp, ti = logp.topk(k, dim=-1)
    bad = ~ok
    prob[bad], entropy[bad], rank[bad] = float("nan"), float("nan"), -1
    top_probs, top_ids = tp.exp().cpu(), ti.cpu()
    top_probs[bad], top_ids[bad] = float("nan"), -1
    return dict(
        probabilities=prob.numpy().astype(np.float32),
        ranks=rank.numpy().astype(np.int64),
        entropies=entropy.numpy().astype(np.float32),
        top_ids=top_ids.numpy().astype(np.int64),
        top_probs=top_probs.numpy().astype(np.float32),
    )


def _stitch(parts: list[np.ndarray], rows: np.ndarray | None, axis: int, key_axis: int | None = None) -> np.ndarray:
    """Concatenate per-call arrays along ``axis``; with ``rows`` (B, n_calls), row b of the result
    takes row ``rows[b, i]`` of call i (NaN where -1: a finished beam). ``key_axis``: pad it with
    zeros to the longest call (attention maps: later calls see more keys)."""
    if key_axis is not None:
        width = max(p.shape[key_axis] for p in parts)
        padded = []
        for p in parts:
            pad = [(0, 0)] * p.ndim
            pad[key_axis] = (0, width - p.shape[key_axis])
            padded.append(np.pad(p, pad))
        parts = padded
    if rows is None:
        return np.concatenate(parts, axis=axis)
    pieces = []
    for i, p in enumerate(parts):
        idx = rows[:, i]
        piece = p[np.maximum(idx, 0)].astype(np.result_type(p.dtype, np.float32), copy=True)
        piece[idx < 0] = np.nan
        pieces.append(piece)
    return np.concatenate(pieces, axis=axis)


class _Stitched(Mapping):
    def __init__(self, names: Callable[[], list[str]], read: Callable[[str], np.ndarray]) -> None:
        self._names, self._read = names, read
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            if name not in self._names():
                from .trace import _missing_message

                raise KeyError(_missing_message(name, self._names()))
            self._cache[name] = self._read(name)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


class Generation:
    """One ``model.generate()`` call inside a :func:`llmdbg.capture`.

    Let B be the number of returned sequences, T_p the prompt length (padding included), n the
    number of generated tokens and T = T_p + n the length of ``sequences``.

    Attributes
    ----------
    sequences : numpy.ndarray
        ``(B, T)`` int64, as ``generate`` returned them.
    prompt_length : int
        T_p.
    token_ids : numpy.ndarray
        ``(B, n)`` int64, the generated tokens (``sequences[:, T_p:]``).
    probabilities, entropies : numpy.ndarray
        ``(B, n)`` float32: the probability of each generated token and the entropy (nats) of its
        step's distribution, from the model's raw logits (softmax in float32, before temperature,
        top-k/top-p or repetition penalties reshape it for sampling).
        Computed on first read; until then the step logits ``generate`` returned are kept
        (n × rows × vocabulary float32).
    ranks : numpy.ndarray
        ``(B, n)`` int64, rank of each generated token in its step's distribution (1 = the most
        likely token).
    top_ids, top_probs : numpy.ndarray
        ``(B, n, 5)`` the five most likely tokens of each step and their probabilities.
    beam_indices : numpy.ndarray or None
        ``(B, n)`` int64 for beam search: the row of the step's batch (``num_beams`` rows per
        input) that produced each token, -1 after the sequence finished; None otherwise.
    activations : Mapping[str, numpy.ndarray]
        Each captured module's output stitched over the calls: ``(B, T − 1, ...)``, equal to one
        forward over ``sequences[:, :-1]`` (:meth:`inputs`). With a token selection in ``reduce``
        each call keeps its selection: ``"last_token"`` gives ``(B, n, ...)``, the position that
        predicted each generated token. Beam search rows follow ``beam_indices``; positions after
        a beam finished are NaN. Module inputs (``inputs=True``) are under ``name + ":input"``.
    attention_stats : dict[int, dict[str, numpy.ndarray]]
        With ``attentions="stats"``: per layer, ``entropy``, ``max_prob``, ``sink_mass``,
        ``special_mass`` as ``(B, H, T − 1)`` float32, every query position of the prefill and
        then each generated token's query over its whole context (recomputed from the queries
        and cached keys the model's kernel received).
    attentions : list of numpy.ndarray
        With ``attentions=True`` or an :class:`llmdbg.AttentionQuery`: per captured layer, the
        maps stitched along the query axis, keys zero-padded to T − 1: ``(B, H, T − 1, T − 1)``
        for full maps, lower-triangular, as one forward's attention.
    """

    def __init__(
        self,
        trace: Trace,
        out: Any,
        before: dict[str, Any],
        after: dict[str, Any],
        prompt: torch.Tensor | None,
        prompt_mask: torch.Tensor | None,
    ) -> None:
        self._trace = trace
        self._before, self._after = before, after
        seqs = out.sequences.detach().cpu()
        logits = tuple(out.logits)
        self.n_generated = len(logits)
        self.sequences = seqs.numpy().astype(np.int64)
        self.prompt_length = int(seqs.shape[1] - self.n_generated)
        beams = getattr(out, "beam_indices", None)
        self._rows = None if beams is None else beams.detach().cpu()[:, : self.n_generated]
        self.beam_indices = None if self._rows is None else self._rows.numpy().astype(np.int64)
        self.token_ids = self.sequences[:, self.prompt_length :]
        self._logits: tuple[torch.Tensor, ...] | None = logits  # step scores are computed on first read
        self._scores: dict[str, np.ndarray] | None = None
        self._encoder: dict[str, torch.Tensor] | None = None
        self._unstitchable: str | None = None  # set by the wrapper: why stitching would be wrong
        self._mask = self._full_mask(prompt, prompt_mask)  # seq2seq: the prompt mask does not fit, ones
        self.activations: Mapping[str, np.ndarray] = _Stitched(self._array_keys, self._stitch_key)
        self._stats_cache: dict[int, dict[str, np.ndarray]] | None = None

    # -- step scores -------------------------------------------------------------------------
    def _score(self, name: str) -> np.ndarray:
        if self._scores is None:
            assert self._logits is not None
            chosen = torch.from_numpy(self.token_ids.copy())
            rows = None if self._rows is None else self._rows
            self._scores = _step_scores(self._logits, chosen, rows, TOP_K)
            self._logits = None  # the stacked copy is gone with the call; drop generate's tuple too
        return self._scores[name]

    probabilities = property(lambda self: self._score("probabilities"))
    ranks = property(lambda self: self._score("ranks"))
    entropies = property(lambda self: self._score("entropies"))
    top_ids = property(lambda self: self._score("top_ids"))
    top_probs = property(lambda self: self._score("top_probs"))

    # -- layout ------------------------------------------------------------------------------
    def _full_mask(self, prompt: torch.Tensor | None, prompt_mask: torch.Tensor | None) -> np.ndarray:
        b, t = self.sequences.shape
        mask = np.ones((b, t), dtype=np.int64)
        if isinstance(prompt_mask, torch.Tensor) and prompt_mask.dim() == 2:
            pm = prompt_mask.detach().cpu().numpy().astype(np.int64)
            if pm.shape[1] == self.prompt_length and b % pm.shape[0] == 0:
                mask[:, : self.prompt_length] = np.repeat(pm, b // pm.shape[0], axis=0)
        return mask

    @property
    def attention_mask(self) -> np.ndarray:
        """``(B, T)`` int64: the prompt's mask (expanded per returned sequence), then ones, as
        ``generate`` extends it."""
        return self._mask

    @property
    def generated_positions(self) -> np.ndarray:
        """Positions of ``inputs()`` whose next-token prediction is a generated token:
        ``T_p − 1 ... T − 2``, int64 (n,)."""
        return np.arange(self.prompt_length - 1, self.sequences.shape[1] - 1, dtype=np.int64)

    def inputs(self, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The teacher-forced inputs that reproduce the generation in one forward:
        ``input_ids = sequences[:, :-1]`` and the matching ``attention_mask``; with left padding
        also ``position_ids`` as ``generate`` computed them (cumulative mask − 1). Pass the
        model to place the tensors on its device. Encoder-decoders get the prompt as the encoder's
        ``input_ids`` and the sequences as ``decoder_input_ids``. Use them with :func:`llmdbg.logit_lens`,
        :func:`llmdbg.patch`, :func:`llmdbg.ablate` and :meth:`metric`."""
        self._check_stitchable()
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
        ids = torch.from_numpy(self.sequences[:, :-1].copy()).to(device)
        mask = torch.from_numpy(self._mask[:, :-1].copy()).to(device)
        if self._encoder is not None:  # encoder-decoder: the prompt feeds the encoder (per sequence)
            reps = ids.shape[0] // self._encoder["input_ids"].shape[0]
            enc = {k: v.repeat_interleave(reps, 0).to(device) for k, v in self._encoder.items()}
            return {**enc, "decoder_input_ids": ids, "decoder_attention_mask": mask}
        out = {"input_ids": ids, "attention_mask": mask}
        if bool((mask == 0).any()):
            pos = mask.long().cumsum(-1) - 1
            out["position_ids"] = pos.masked_fill(mask == 0, 1)
        return out

    def metric(self, step: int | None = None) -> Callable[[Any], torch.Tensor]:
        """``metric(outputs)`` for a forward over :meth:`inputs`: the mean over sequences of the
        log-probability of generated token ``step`` (default: of all generated tokens, averaged),
        for :func:`llmdbg.patch` and :func:`llmdbg.ablate` on generated positions."""
        n = self.n_generated
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer))):
            raise TypeError(f"step must be an int or None, got {step!r}")
        if step is not None and not -n <= step < n:
            raise ValueError(f"step {step} is out of range: {n} tokens were generated")
        steps = list(range(n)) if step is None else [int(step) % n]
        pos = torch.from_numpy(self.generated_positions[steps])
        ids = torch.from_numpy(self.token_ids[:, steps].copy())

        def value(outputs: Any) -> torch.Tensor:
            logits = outputs.logits if hasattr(outputs, "logits") else outputs
            picked = logits[:, pos.to(logits.device)].float().log_softmax(-1)
            return picked.gather(2, ids.to(logits.device)[..., None]).mean()

        return value

    # -- stitching ---------------------------------------------------------------------------
    def _check_stitchable(self) -> None:
        if self._unstitchable is not None:
            raise ValueError(
                f"this generation cannot be replayed as one forward over sequences[:, :-1]: {self._unstitchable}. "
                "The step scores are valid; read the calls one by one with trace.calls(...)"
            )

    def _calls(self, key: str) -> list[np.ndarray]:
        self._check_stitchable()
        start = self._before["keys"].get(key, 0)
        end = self._after["keys"].get(key, 0)
        forwards = self._after["forwards"] - self._before["forwards"]
        if forwards != self.n_generated:
            raise ValueError(
                f"generate() ran the model {forwards} times for {self.n_generated} tokens (assisted or "
                "speculative decoding?); stitching needs one forward per token: read trace.calls(...)"
            )
        if end - start != forwards:
            raise ValueError(
                f"{key!r} ran {end - start} times during generate() but the model ran {forwards} forward "
                "passes; only modules called once per forward (decoder modules) can be stitched. Read "
                f"trace.calls({key!r}) instead"
            )
        return self._trace.calls(key)[start:end]

    def _array_keys(self) -> list[str]:
        from .trace import ATTN_GRAD_SUFFIX, ATTN_SUFFIX, GRAD_SUFFIX

        skip = (ATTN_SUFFIX, ATTN_GRAD_SUFFIX, GRAD_SUFFIX)
        return [
            k
            for k in self._after["keys"]
            if not k.endswith(skip) and self._after["keys"][k] > self._before["keys"].get(k, 0)
        ]

    @property
    def hidden_states(self) -> list[np.ndarray]:
        """With ``hidden_states=True``: the embedding output, then every block's output, each
        stitched to ``(B, T − 1, D)`` (as :attr:`llmdbg.Trace.hidden_states` for one forward)."""
        return [self.activations[k] for k in self._trace.hidden_state_modules if k in self.activations]

    def _stitch_key(self, key: str) -> np.ndarray:
        parts = self._calls(key)
        if any(p.ndim < 2 for p in parts):
            raise ValueError(f"{key!r} has no sequence axis to stitch along; read trace.calls({key!r})")
        return _stitch(parts, self.beam_indices, axis=1)

    @property
    def attention_stats(self) -> dict[int, dict[str, np.ndarray]]:
        self._check_stitchable()
        if self._stats_cache is None:
            out: dict[int, dict[str, np.ndarray]] = {}
            for layer, stats in sorted(self._trace._attention_stats.items()):
                start, end = self._before["stats"].get(layer, 0), self._after["stats"].get(layer, 0)
                if end - start != self.n_generated:
                    continue  # e.g. cross-attention of an encoder-decoder: not one call per token
                out[layer] = {
                    name: _stitch(parts[start:end], self.beam_indices, axis=2) for name, parts in stats.items()
                }
            self._stats_cache = out
        return self._stats_cache

    @property
    def attentions(self) -> list[np.ndarray]:
        from .trace import ATTN_SUFFIX

        maps = []
        for m in self._trace.attention_modules:
            key = m + ATTN_SUFFIX
            if self._after["keys"].get(key, 0) > self._before["keys"].get(key, 0):
                parts = self._calls(key)
                maps.append(_stitch(parts, self.beam_indices, axis=parts[0].ndim - 2, key_axis=parts[0].ndim - 1))
        return maps

    # -- views -------------------------------------------------------------------------------
    def to_frame(self, tokenizer: Any = None) -> Any:
        """One row per (sequence, step): token id (and string with ``tokenizer``), probability,
        surprisal (−log p, nats), rank and entropy, as a pandas DataFrame."""
        import pandas as pd

        b, n = self.token_ids.shape
        frame = pd.DataFrame(
            {
                "sequence": np.repeat(np.arange(b), n),
                "step": np.tile(np.arange(n), b),
                "token_id": self.token_ids.reshape(-1),
                "probability": self.probabilities.reshape(-1),
                "surprisal": -np.log(self.probabilities.reshape(-1).astype(np.float64)),
                "rank": self.ranks.reshape(-1),
                "entropy": self.entropies.reshape(-1),
            }
        )
        if tokenizer is not None:
            frame.insert(3, "token", tokenizer.convert_ids_to_tokens(frame["token_id"].tolist()))
        return frame

    def __repr__(self) -> str:
        return (
            f"<llmdbg.Generation: {self.sequences.shape[0]} sequence(s), prompt {self.prompt_length} + {self.n_generated} generated "
            f"tokens, {len(self.activations)} stitched activations>"
        )

    def _repr_html_(self) -> str:
        from .._internal import html as h

        rows = [
            [
                str(i),
                h.fmt(float(self.probabilities[0, i])),
                str(int(self.ranks[0, i])),
                h.fmt(float(self.entropies[0, i])),
            ]
            for i in range(min(self.n_generated, 24))
        ]
        body = h.table(["step", "p(token)", "rank", "entropy"], rows)
        return h.box(
            "llmdbg.Generation", h.esc(repr(self)), body, "sequence 0; <code>.to_frame()</code> has every step"
        )
