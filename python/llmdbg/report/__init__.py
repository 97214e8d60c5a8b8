"""The offline HTML report: a page (:class:`Report`), the context every section reads
(:class:`ReportContext`), the sections that work on any model, the input checks of
``llmdbg report``, and the job that runs them (:func:`run_report`); the page of a dataset run
(:func:`write_run_report`) and of a comparison of two saved traces (:func:`write_comparison_report`).

The MiniLM demo lives in :mod:`llmdbg.demo` (``llmdbg demo``, ``make demo``).
"""

from .context import ReportContext, Section, SectionFailedWarning
from .inputs import KINDS, TruncationWarning, check_out_dir, check_target, load_model, read_texts, tokenize
from .job import run_report
from .page import Report, prepare_out_dir
from .run_page import write_run_report
from .sections_compare import add_comparison, write_comparison_report

__all__ = [
    "KINDS",
    "Report",
    "ReportContext",
    "Section",
    "SectionFailedWarning",
    "TruncationWarning",
    "add_comparison",
    "check_out_dir",
    "check_target",
    "load_model",
    "prepare_out_dir",
    "read_texts",
    "run_report",
    "tokenize",
    "write_comparison_report",
    "write_run_report",
]
