"""The result type of :func:`llmdbg.attention_summary`: a pandas DataFrame with a compact notebook
display (a layer × head grid instead of L·H rows). Imported lazily, with pandas."""

from __future__ import annotations

import pandas as pd

from .._internal import html as h

__all__ = ["AttentionSummary"]


class AttentionSummary(pd.DataFrame):
    """One row per (layer, head); see :func:`llmdbg.attention_summary` for the columns.

    A plain :class:`pandas.DataFrame` in every respect except its notebook display, which shows
    a layer × head grid of normalised entropy (darker: more spread out) with the flagged heads
    marked (``S`` sink, ``C`` collapsed, ``U`` uniform; hover a cell for the sink token and score).
    Operations that derive a new frame (``pivot``, ``drop``, indexing) return plain DataFrames.
    """

    @property
    def _constructor(self):
        return pd.DataFrame

    def _repr_html_(self) -> str:
        needed = {"layer", "head", "entropy_norm", "sink", "collapsed", "uniform"}
        if self.empty or not needed <= set(self.columns):
            return pd.DataFrame(self)._repr_html_()
        layers = sorted(int(v) for v in self["layer"].unique())
        heads = sorted(int(v) for v in self["head"].unique())
        by_cell = {(int(r["layer"]), int(r["head"])): r for r in self.to_dict(orient="records")}
        rows = []
        for layer in layers:
            cells = [str(layer)]
            for head in heads:
                r = by_cell.get((layer, head))
                if r is None:
                    cells.append("")
                    continue
                marks = "".join(m for m, k in (("S", "sink"), ("C", "collapsed"), ("U", "uniform")) if r[k])
                tip = (
                    f"layer {layer}, head {head}: entropy_norm {h.fmt(float(r['entropy_norm']))}, "
                    f"sink score {h.fmt(float(r.get('sink_score', float('nan'))))}"
                )
                if r.get("sink_token_str") is not None:
                    tip += f" on {r['sink_token_str']!r}"
                mark = f' <b style="{h.BAD}">{marks}</b>' if marks else ""
                cells.append(
                    f'<span title="{h.esc(tip)}" style="display: block; padding: 0 2px; '
                    f'{h.shade(float(r["entropy_norm"]))}">{float(r["entropy_norm"]):.2f}{mark}</span>'
                )
            rows.append(cells)
        counts = {k: int(self[k].sum()) for k in ("collapsed", "uniform", "sink")}
        causal = self.attrs.get("causal")
        summary = (
            f"{len(layers)} layers × {len(heads)} heads"
            f"{'' if causal is None else (', causal' if causal else ', bidirectional')}; "
            f"{counts['sink']} sink, {counts['collapsed']} collapsed, {counts['uniform']} uniform"
        )
        body = h.table(["layer \\ head", *[str(x) for x in heads]], rows)
        footer = (
            "normalised entropy per head (0: one key, 1: uniform); S sink, C collapsed, U uniform. "
            "A pandas DataFrame: <code>summary.to_string()</code> shows every column"
        )
        return h.box("llmdbg attention summary", summary, body, footer)
