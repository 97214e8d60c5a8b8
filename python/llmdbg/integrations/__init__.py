"""Callbacks that attach :func:`llmdbg.watch` to training frameworks.

* :mod:`llmdbg.integrations.hf` — ``DebugCallback`` for ``transformers.Trainer``.
* :mod:`llmdbg.integrations.lightning` — ``DebugCallback`` for Lightning (``pip install 'llmdbg[lightning]'``).

The submodules import their framework lazily; importing this package imports neither.
"""

__all__ = ["hf", "lightning"]
