"""Attention rollout (Abnar & Zuidema 2020), computed by the C++ core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _core
from .._internal.threads import renamed_num_threads, resolve_n_jobs
from ._inputs import attention_stack, query_rows

HEAD_FUSIONS = ("mean", "max", "min")


def _check_options(head_fusion: str, n_jobs: int | None) -> int:
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    return resolve_n_jobs(n_jobs)


@renamed_num_threads
def attention_rollout(
    attentions: Any,
    *,
    head_fusion: str = "mean",
    residual: bool = True,
    discard_ratio: float = 0.0,
    rows: Sequence[int] | None = None,
    attention_mask: Any = None,
    stack: str | None = None,
    renormalize: bool = False,
    sinks: bool | None = None,
    n_jobs: int | None = None,
) -> np.ndarray:
    """How much each input token contributes to each position after the last layer, by
    multiplying the per-layer attention maps (attention rollout, Abnar & Zuidema 2020).

    Each layer's heads are fused into one map Ā_l (mean, max or min over heads). With
    ``residual`` the skip connection is modelled as half of the mixing:
    Â_l = (Ā_l + I) / rowsum(Ā_l + I) (= 0.5 Ā_l + 0.5 I when rows sum to 1). The rollout is the
    product R = Â_L ⋯ Â_1 (bottom layer ``1``): ``R[b, i, j]`` is the share of position ``i``
    after the last layer that traces back to input token ``j``; with ``residual`` each row sums
    to 1.

    Parameters
    ----------
    attentions : Trace, sequence of array_like, or array_like
        A :class:`~llmdbg.Trace` captured with ``attentions=True``, a sequence of per-layer
        ``(B, H, T, T)`` arrays or tensors (``(B, T, T)`` head-mean maps are accepted too) bottom
        layer first, or one ``(L, B, H, T, T)`` array. float32 or float64.
    head_fusion : {"mean", "max", "min"}
        How heads are fused into one map per layer.
    residual : bool
        Add the identity and renormalise rows (the paper's and vit-explain's default). Without
        it the fused maps are multiplied as they are.
    discard_ratio : float in [0, 1)
        jacobgil/vit-explain's filter: before the residual is added, zero the
        ``int(n * n * discard_ratio)`` smallest entries of each fused (sequence, layer) map of
        ``n`` real tokens, except entry ``[0, 0]`` (kept even when it is among them, so then one
        fewer is zeroed). Ties are taken in row-major order, so the result is deterministic.
        Rows are then renormalised properly (vit-explain divides along the wrong axis, its issue
        #16); without ``residual`` they are left unnormalised.
    rows : sequence of int, optional
        Compute only these query rows (negative indices count from the end), top-down as
        e_rᵀ Â_L ⋯ Â_1 in O(L · len(rows) · T²) instead of the full O(L · T³) product. Padding
        rows come out as zeros.
    attention_mask : array_like, optional
        ``(B, T)`` 0/1 mask (default: the Trace's). Each sequence is computed on its real tokens
        only, so a padded sequence gives exactly its unpadded result; padding rows and columns
        are 0.
    stack : {"encoder", "decoder"}, optional
        Which self-attention stack of an encoder-decoder Trace to roll out.
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
        float32 ``(B, T, T)``, or ``(B, len(rows), T)`` with ``rows``. Accumulated in float64,
        returned as float32.

    Raises
    ------
    ValueError
        For a bad ``head_fusion``, ``discard_ratio`` outside [0, 1), rows outside [-T, T), and
        every input problem :func:`~llmdbg.attention.attention_stack` reports (shapes, NaN/Inf,
        rows not summing to 1, masks).

    Notes
    -----
    Learned attention sinks (gpt-oss): the sink is a virtual key outside the sequence, so a row
    of Ā_l sums to 1 − (the mass the sink took). The maps are not renormalised: with
    ``residual``, Â_l = (Ā_l + I) / rowsum(Ā_l + I) shares each position between the real keys
    and itself in proportion to what the model gave them, and the sink's share leaves the graph;
    without ``residual`` it is lost on every layer and rows of R sum to less than 1. This is
    what :func:`llmdbg.streaming_rollout` computes from the queries, keys and sink logits.

    Cost: O(L · H · T²) to read and fuse the maps plus O(L · T³) for the full product (a third
    of that for causal maps, whose zero upper triangle is skipped), or O(L · len(rows) · T²)
    with ``rows``. Sequences are spread over threads when B >= n_jobs, otherwise the rows
    of each product are; the GIL is released.

    References
    ----------
    S. Abnar and W. Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.
    """
    threads = _check_options(head_fusion, n_jobs)
    if not 0.0 <= float(discard_ratio) < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
    st = attention_stack(attentions, attention_mask=attention_mask, stack=stack, renormalize=renormalize, sinks=sinks)
    _, _, t = st.shape
    return _core.attention_rollout(
        st.layers,
        mask=st.mask,
        rows=query_rows(rows, t),
        head_fusion=head_fusion,
        residual=bool(residual),
        discard_ratio=float(discard_ratio),
        num_threads=threads,
    )
