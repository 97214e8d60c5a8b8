"""The public entry point :func:`capture` (its context manager is :class:`~.session.Capture`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from .query import AttentionQuery
from .session import Capture


def capture(
    model: torch.nn.Module,
    modules: str | re.Pattern | Iterable[str | re.Pattern] | None = None,
    *,
    attentions: bool | str | AttentionQuery = False,
    hidden_states: bool = False,
    inputs: bool = False,
    grads: bool = False,
    reduce: Any = None,
    dtype: Any = np.float32,
    max_bytes: int | None = None,
    tokenizer: Any = None,
    stats: bool = True,
    attention_consumer: Any = None,
    attention_impl: str = "auto",
    verify: bool = False,
) -> Capture:
    """Record activations, attention maps and gradients of a model's modules into numpy.

    Use it as a context manager around the forward (and optionally backward) passes you want
    to look at::

        with llmdbg.capture(model, "*.mlp", attentions=True) as trace:
            model(**batch)
        trace.activations["model.layers.3.mlp"]   # numpy array
        trace.attentions[0]                        # (B, H, T, T) float32
        trace.stats["model.layers.3.mlp"].absmax

    Parameters
    ----------
    model : torch.nn.Module
        Any module; Hugging Face ``transformers`` models get roles and attention maps, also inside
        a wrapper (a user's module holding one, PEFT, DDP, ``torch.compile``; names stay relative
        to what is passed, and compiled code runs eagerly inside the block so that hooks fire).
    modules : str, re.Pattern or list of them, optional
        Which modules' outputs to keep: a role (``"blocks"``, ``"attention"``, ``"mlp"``,
        ``"embeddings"``, ``"final_norm"``, ``"unembedding"``, ...), a glob on qualified names
        (``"*.mlp"``, ``"encoder.layer.*"``), or a regular expression (``"re:..."`` or a compiled
        pattern, matched against the whole name). A pattern that matches nothing is an error
        listing the closest names.
    attentions : bool, "stats" or AttentionQuery
        Attention of every attention layer (Hugging Face models only; a hybrid's Mamba or
        linear-attention layers have none, and a state-space model raises), recomputed from the
        queries and keys the model's own kernel (SDPA, flash, eager) receives, so the model's
        outputs are bit for bit those of an uncaptured run (see ``attention_impl``):

        - ``True``: full maps ``(B, H, T_q, T_k)`` in ``trace.attentions`` (``(B, T_q, T_k)`` with
          ``reduce="head_mean"``; a token selection in ``reduce`` keeps those query rows);
        - ``"stats"``: per-query statistics only, ``trace.attention_stats[layer]`` maps
          ``entropy``, ``max_prob``, ``sink_mass`` and ``special_mass`` to ``(B, H, T_q)``
          float32 arrays (O(L·B·H·T) memory instead of O(L·B·H·T²));
        - :class:`llmdbg.AttentionQuery`: maps of chosen layers, heads and query rows only,
          optionally fused over heads.

        Probabilities are recomputed in float32 with float64 sums; they match eager attention's
        to about 1e-7 in float32. The memory needed is checked against ``max_bytes`` before the
        forward (see :func:`llmdbg.estimate_memory`).
    attention_impl : {"auto", "recompute", "eager"}
        ``"recompute"`` records each attention call through transformers' ``AttentionInterface``
        and recomputes what was asked in C++ (CPU) or torch (GPU) tiles; it raises when the model
        cannot be recorded. ``"eager"`` switches the model to eager attention inside the block
        (restored afterwards) and reads the weights it returns; eager and SDPA logits differ by
        about 1e-7 to 1e-3. ``"auto"`` recomputes wherever the model supports it and falls back
        to eager with a warning naming why; it also takes eager when the weights must be in the
        autograd graph (``grads=True``) or go to an ``attention_consumer``.
    verify : bool
        With the recompute path, check each call: a sample of 8 query rows of the recomputed
        probabilities times the values must reproduce the kernel's own output within 1e-4
        (float32) or 2e-2 (bfloat16/float16) of ``max |V|``; raises
        :class:`llmdbg.VerificationError` otherwise.
    hidden_states : bool
        Capture the embedding output and every block output (the residual stream; every layer of a
        hybrid or state-space model).
    inputs : bool
        Also capture the first tensor input of each selected module (key ``name + ":input"``).
    grads : bool
        Also capture gradients of the selected outputs (and of attention maps) when a backward
        pass runs inside the block (keys ``name + ":grad"``).
    reduce : str, int, slice or tuple of these, optional
        Reduce before copying to host: ``"head_mean"`` (average attention heads),
        ``"last_token"`` / ``"first_token"`` / an int / a slice (keep those token positions; the
        query axis for attention maps), ``"stats"`` (keep statistics only, no arrays).
        Statistics always describe the unreduced tensor.
    dtype : numpy dtype
        float16, float32 (default) or float64 for the host copies.
    max_bytes : int, optional
        Budget for host copies; exceeding it raises :class:`llmdbg.CaptureBudgetError` naming
        the module and the size, instead of exhausting memory.
    tokenizer : optional
        A Hugging Face tokenizer; the token strings of ``input_ids`` are recorded in
        ``trace.tokens``.
    stats : bool
        Compute statistics of every captured tensor (one fused C++ pass, float64 accumulation).
    attention_consumer : callable, optional
        ``f(layer, module_name, weights)`` called inside each attention hook with the layer's
        ``(B, H, T_q, T_k)`` weights on their own device (still attached to the autograd graph;
        the consumer must not modify them), instead of storing them: for
        streaming analyses that keep only a running result (see :func:`llmdbg.rollout`).
        ``layer`` counts the captured attention modules in layout order.

    Returns
    -------
    Capture
        A context manager whose ``__enter__`` returns the :class:`Trace`.

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``; ``attentions`` on a module that neither is nor wraps
        exactly one HF model; bad dtype.
    ValueError
        A pattern matches nothing; nothing to capture; meta-device or offloaded parameters;
        ``attentions`` on a model without attention (Mamba, RWKV);
        bad ``reduce`` or ``max_bytes``; ``attentions="stats"`` with ``reduce="head_mean"``; an
        AttentionQuery layer, head or row that does not exist (the layer before the forward, heads
        and rows when the call shows the sizes).
    RuntimeError
        A capture is already active on this model (hooks would stack);
        ``attention_impl="recompute"`` on a model whose attention calls cannot be recorded.
    llmdbg.CaptureBudgetError
        Before the forward, when the estimate of the attention capture exceeds ``max_bytes``.

    Notes
    -----
    Forwards run from several threads inside one capture (a thread pool) are all recorded, each
    call whole, in the order the calls reach the store; the C++ store takes one lock per call.
    """
    return Capture(
        model,
        modules,
        attentions=attentions,
        hidden_states=hidden_states,
        inputs=inputs,
        grads=grads,
        reduce=reduce,
        dtype=dtype,
        max_bytes=max_bytes,
        tokenizer=tokenizer,
        stats=stats,
        attention_consumer=attention_consumer,
        attention_impl=attention_impl,
        verify=verify,
    )
