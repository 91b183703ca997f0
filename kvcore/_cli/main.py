"""The ``kvcore`` command line: ``plugins``, ``inspect`` and ``demo``.

A thin face over the library. Exit status: 0 success; 1 when ``inspect`` finds an error
anomaly or ``demo`` fails to load a format; 2 for bad usage or an unreadable checkpoint.
Diagnostics go through ``logging.getLogger("kvcore")`` to stderr; results go to stdout.
The JSON shapes are documented in docs/cli.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from kvcore import __version__
from kvcore._cli.render import render_demo, render_inspection, render_plugins
from kvcore._cli.table import Style
from kvcore._errors import KvcoreError
from kvcore._plugins.manager import get_plugin_manager, plugin_records
from kvcore._show import printable
from kvcore._warn import logged_instead

__all__ = ["main"]

log = logging.getLogger("kvcore")
PLUGIN_KEYS = ("name", "distribution", "version", "module", "hooks", "status", "error")
"""The documented keys of ``kvcore plugins --json``, in order."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 for --help
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("kvcore: error: choose a command: plugins, inspect or demo", file=sys.stderr)
        return 2
    handler = _attach_logging(args.verbose)
    args.out = sys.stdout
    try:
        # Only results reach stdout: whatever plugins print (at import, in hooks) goes to
        # stderr, so that --json output stays JSON.
        with warnings.catch_warnings(), logged_instead(), contextlib.redirect_stdout(sys.stderr):
            # kvcore's warnings reach stderr through the log handler, as "kvcore: warning: ...".
            warnings.simplefilter("ignore")
            status: int = args.run(args)
            return status
    except KvcoreError as exc:
        log.error("%s", exc)
        return 2
    except BrokenPipeError:  # `kvcore inspect ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    finally:
        log.removeHandler(handler)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvcore", description="Inspect and load quantized checkpoints' "
                                     "KV-cache scales through kvcore's plugins.")
    parser.add_argument("--version", action="version", version=f"kvcore {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more diagnostics (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    plugins = sub.add_parser("plugins", help="list every discovered plugin and its status")
    _json_flag(plugins)
    plugins.set_defaults(run=_plugins)
    inspect = sub.add_parser("inspect", help="show a checkpoint's KV-cache scales and anomalies, without a model")
    inspect.add_argument("checkpoint", type=Path, help="checkpoint directory (or one .safetensors file)")
    inspect.add_argument("--tp-size", type=_positive_int, metavar="T",
                         help="also show which KV heads each of T tensor-parallel ranks gets")
    inspect.add_argument("--layers", action="store_true",
                         help="list every layer's scales (by default only up to 4 layers; the summary covers all)")
    _json_flag(inspect)
    inspect.set_defaults(run=_inspect)
    demo = sub.add_parser("demo", help="write and load a small checkpoint of each installed format")
    demo.add_argument("--dir", type=Path, help="write the checkpoints here and keep them (default: a temporary "
                      "directory, removed afterwards)")
    _json_flag(demo)
    demo.set_defaults(run=_demo)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (shape documented in docs/cli.md)")


def _attach_logging(verbose: int) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.addHandler(handler)
    log.setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    return handler


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"kvcore: {record.levelname.lower()}: {printable(record.getMessage())}"


def _emit(args: argparse.Namespace, data: object, human: Callable[[], str]) -> None:
    if args.json:
        # NaN / Infinity appear only in a scale an error anomaly already names (docs/cli.md).
        print(json.dumps(data, indent=2), file=args.out)
    else:
        print(human(), file=args.out)
    args.out.flush()


def _style(args: argparse.Namespace) -> Style:
    return Style.for_stream(args.out)


def _plugins(args: argparse.Namespace) -> int:
    # strict=False: a broken plugin is what this command reports, never a reason to fail.
    records = list(plugin_records(get_plugin_manager(strict=False)).values())
    data = [{key: record.as_dict().get(key) for key in PLUGIN_KEYS} for record in records]
    _emit(args, data, lambda: render_plugins(records, _style(args)))
    return 0


# The loader's modules import torch (seconds); `kvcore plugins` answers without them.
def _inspect(args: argparse.Namespace) -> int:
    from kvcore._cli.inspect import inspect_checkpoint

    result = inspect_checkpoint(args.checkpoint, tp_size=args.tp_size)
    _emit(args, result.as_dict(), lambda: render_inspection(result, _style(args), every_layer=args.layers))
    return 1 if result.has_errors else 0


def _demo(args: argparse.Namespace) -> int:
    if args.dir is not None:
        try:
            args.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # an existing file, no permission, a read-only file system
            log.error("cannot use --dir %r: %s; name a directory kvcore may write to (it is created if "
                      "missing)", str(args.dir), exc.strerror or exc)
            return 2
        return _demo_in(args, args.dir, kept=True)
    with tempfile.TemporaryDirectory(prefix="kvcore-demo-") as tmp:
        return _demo_in(args, Path(tmp), kept=False)


def _demo_in(args: argparse.Namespace, directory: Path, *, kept: bool) -> int:
    from kvcore._cli.demo import run_demo
    from kvcore._cli.demo_hf import hf_demo, render_hf_demo

    results = run_demo(directory)
    hf = hf_demo()
    data = {"directory": str(directory), "kept": kept, "formats": [r.as_dict() for r in results], "transformers": hf}
    where = f"{directory}{'' if kept else ' (removed afterwards)'}"
    _emit(args, data, lambda: f"{render_demo(results, where, _style(args))}\n\n{render_hf_demo(hf)}")
    return 1 if any(r.status == "failed" for r in results) else 0
