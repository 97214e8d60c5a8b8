"""Traces and results that outlive the process: loading what ``.save`` wrote, and comparing two
traces of the same model (:func:`compare`, :func:`compare_heads`)."""

from .comparison import compare, compare_heads

__all__ = ["compare", "compare_heads"]
