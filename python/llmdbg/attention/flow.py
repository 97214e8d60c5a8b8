"""Attention flow (Abnar & Zuidema 2020): exact max-flow values on the attention graph, computed
by the C++ core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _core
from .._internal.threads import renamed_num_threads
from ._inputs import attention_stack, query_rows
from .rollout import _check_options


@renamed_num_threads
def attention_flow(
    attentions: Any,
    *,
    rows: Sequence[int] | None = None,
    head_fusion: str = "mean",
    residual: bool = True,
    attention_mask: Any = None,
    stack: str | None = None,
    renormalize: bool = False,
    sinks: bool | None = None,
    n_jobs: int | None = None,
) -> np.ndarray:
    """How much each input token can contribute to each output position when attention is read
    as a network of pipes with capacities (attention flow, Abnar & Zuidema 2020).

    The attention graph has a node per (layer, token): layer 0 holds the input tokens, layer
    ``l`` the positions after attention layer ``l``. The edge (l, i) -> (l − 1, j) has capacity
    Â_l[i, j], the head-fused map with the residual as in :func:`attention_rollout`. ``F[b, u, v]``
    is the value of a maximum flow from output node (L, u) to input node (0, v); each row is
    then divided by its sum, as the reference implementation (``compute_flows``) does. Unlike
    rollout, which multiplies the maps, flow is limited by the narrowest cut between ``u`` and
    ``v``.

    Parameters
    ----------
    attentions : Trace, sequence of array_like, or array_like
        A :class:`~llmdbg.Trace` captured with ``attentions=True``, a sequence of per-layer
        ``(B, H, T, T)`` arrays or tensors (``(B, T, T)`` head-mean maps are accepted too) bottom
        layer first, or one ``(L, B, H, T, T)`` array. float32 or float64.
    rows : sequence of int, optional
        Output positions (sources) to compute, negative indices counting from the end; the cost
        is proportional to their number. Padding rows come out as zeros.
    head_fusion : {"mean", "max", "min"}
        How heads are fused into one map per layer.
    residual : bool
        Add the identity and renormalise rows before using the maps as capacities (the paper's
        setting).
    attention_mask : array_like, optional
        ``(B, T)`` 0/1 mask (default: the Trace's). Padding tokens are removed from the graph;
        their rows and columns are 0.
    stack : {"encoder", "decoder"}, optional
        Which self-attention stack of an encoder-decoder Trace to use.
    renormalize : bool
        Divide rows that do not sum to 1 by their sums instead of raising.
    sinks : bool, optional
        The maps come from a model with learned attention sinks (gpt-oss): real rows may sum to
        less than 1 and are used as they are (see Notes). None: detected from a Trace's model
        family (:data:`~llmdbg.attention.SINK_FAMILIES`); arrays need ``sinks=True``.
    n_jobs : int, optional
        Threads for the C++ kernel: None uses ``torch.get_num_threads()``, -1 all cores.
        identical for every thread count.

    Returns
    -------
    numpy.ndarray
        float32 ``(B, T, T)``, or ``(B, len(rows), T)`` with ``rows``; every row of a real token
        sums to 1. Accumulated in float64, returned as float32.

    Raises
    ------
    ValueError
        For a bad ``head_fusion``, rows outside [-T, T), and every input problem
        :func:`~llmdbg.attention.attention_stack` reports.

    Notes
    -----
    With learned attention sinks the capacities are Â_l as :func:`attention_rollout` builds them
    (the sink's mass leaves the graph) before each row is divided by its sum.

    One exact max-flow per (output, input) pair, as in the paper, but in C++: push–relabel with
    global relabelling and the gap heuristic on the layered graph stored as dense per-layer
    ``T × T`` capacity blocks, in float64, with (sequence, output row) pairs spread over
    threads and the GIL released. Each max-flow touches the L · T² edges a few times, so the
    whole ``(T, T)`` map costs about O(L · T⁴): milliseconds at T = 32, a fraction of a second
    at T = 64 (the reference's networkx loop takes minutes to hours there). Use ``rows`` for
    long sequences.

    References
    ----------
    S. Abnar and W. Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.
    """
    threads = _check_options(head_fusion, n_jobs)
    st = attention_stack(attentions, attention_mask=attention_mask, stack=stack, renormalize=renormalize, sinks=sinks)
    _, _, t = st.shape
    return _core.attention_flow(
        st.layers,
        mask=st.mask,
        rows=query_rows(rows, t),
        head_fusion=head_fusion,
        residual=bool(residual),
        num_threads=threads,
    )
