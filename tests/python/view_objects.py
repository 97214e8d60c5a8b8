"""Real llmdbg results from tiny random models, for the interactive views' tests (built once).

The models are sharpened where a random init would make every number alike (near-uniform
attention, flat next-token distributions): queries and keys of GPT-2 scaled up, the final norm's
gain raised, so the views' colours and screenshots show structure. The objects are still exactly
what llmdbg computes for those models.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import transformers as tf

import llmdbg
from tiny_models import CONFIGS, H, minilm_tokenizer, tiny_inputs

HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
PROMPT = "the cat sat on the"


def _gpt2(vocab: int | None = None, *, sharpen: float = 10.0, lm: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = CONFIGS["gpt2"]()
    if vocab is not None:
        cfg.vocab_size = vocab
    model = (tf.AutoModelForCausalLM if lm else tf.AutoModel).from_config(cfg).eval()
    blocks = model.transformer.h if lm else model.h
    with torch.no_grad():
        for block in blocks:  # q and k columns of c_attn: logits grow by sharpen**2
            block.attn.c_attn.weight[:, : 2 * H] *= sharpen
            block.attn.c_attn.bias[: 2 * H] *= sharpen
    if lm:
        model.generation_config.eos_token_id = None  # random weights: never stop early
    return model


@functools.cache
def attention_trace(length: int = 12):
    """A Trace with maps (batch 2 x 4 heads x 2 layers, ``length`` tokens), its tokens hostile."""
    model = _gpt2()
    inputs = tiny_inputs("gpt2", batch=2, length=length)
    with llmdbg.capture(model, attentions=True) as trace, torch.no_grad():
        model(**inputs)
    tokens = HOSTILE + [f"tok{i}" for i in range(length - 2)]
    return trace, tokens


@functools.cache
def stats_trace(length: int = 12):
    """A Trace captured with attentions="stats" (per-query statistics, no maps)."""
    model = _gpt2()
    with llmdbg.capture(model, attentions="stats") as trace, torch.no_grad():
        model(**tiny_inputs("gpt2", batch=2, length=length))
    return trace


@functools.cache
def empty_trace():
    """A Trace of block outputs only: no attention at all."""
    model = _gpt2()
    with llmdbg.capture(model, "blocks") as trace, torch.no_grad():
        model(**tiny_inputs("gpt2", batch=1, length=5))
    return trace


@functools.cache
def generation_attribution(hostile: bool = True):
    """attribute_generation on a tiny GPT-2 with the MiniLM tokenizer; two prompt tokens hostile."""
    tok = minilm_tokenizer()
    model = _gpt2(tok.vocab_size, lm=True)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(20)
    g = llmdbg.attribute_generation(model, tok, PROMPT, max_new_tokens=4, n_steps=8, baseline=3, progress=False)
    if not hostile:
        return g
    sources = list(g.source_tokens)
    sources[1:3] = HOSTILE
    return dataclasses.replace(g, source_tokens=sources)


@functools.cache
def attributions():
    """Saliency and integrated gradients of one text on a tiny BERT classifier, tokens hostile."""
    tok = minilm_tokenizer()
    torch.manual_seed(0)
    cfg = CONFIGS["bert"]()
    cfg.vocab_size = tok.vocab_size
    model = tf.AutoModelForSequenceClassification.from_config(cfg).eval()
    text = ["a fine day for a walk", "short"]
    sal = llmdbg.saliency(model, text, tokenizer=tok, progress=False)
    ig = llmdbg.integrated_gradients(model, text, tokenizer=tok, progress=False)
    tokens = [list(t) for t in sal.tokens]
    tokens[0][2:4] = HOSTILE
    return dataclasses.replace(sal, tokens=tokens), dataclasses.replace(ig, tokens=[list(t) for t in tokens])


@functools.cache
def lens_result():
    """logit_lens of a tiny GPT-2 LM (final-norm gain raised) with the MiniLM tokenizer."""
    tok = minilm_tokenizer()
    model = _gpt2(tok.vocab_size, lm=True)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(80)
    res = llmdbg.logit_lens(model, [PROMPT + " mat", PROMPT], tokenizer=tok, top_k=3, target="next", progress=False)
    top = res.top_tokens.copy()
    top[-1, 0, 1, 0] = HOSTILE[0]
    top[-1, 0, 2, 0] = HOSTILE[1]
    inputs = [list(t) for t in res.input_tokens]
    inputs[0][1:3] = HOSTILE
    return dataclasses.replace(res, top_tokens=top, input_tokens=inputs)


@functools.cache
def query_trace(length: int = 12):
    """A Trace captured with an AttentionQuery: layer 1, heads 2 and 3, query rows -1 and 4."""
    model = _gpt2()
    query = llmdbg.AttentionQuery(layers=[1], heads=[2, 3], rows=[-1, 4])
    with llmdbg.capture(model, attentions=query) as trace, torch.no_grad():
        model(**tiny_inputs("gpt2", batch=2, length=length))
    full = attention_trace(length)[0].attentions[1]  # the same model and inputs' whole maps
    return trace, query, full
