"""Entry point: the ``tvreg`` group, the global ``--registry`` option and error mapping.

Every :class:`tvreg.TvregError` becomes one line on stderr and its exit code (2 for bad input,
1 for failures); click's usage errors exit 2 as well. Every warning tvreg issues (a category of
a ``tvreg`` module, e.g. :class:`tvreg.ZeroVectorWarning`) becomes one ``tvreg: warning: …``
line on stderr, in every command.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import warnings

import click

import tvreg
from tvreg.errors import TvregError

from .output import message


def _is_broken_pipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError) or (
        isinstance(exc, OSError) and exc.errno == errno.EPIPE)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit cannot fail a second time
    (what the Python docs recommend for SIGPIPE/BrokenPipeError)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _is_tvreg_warning(category: type) -> bool:
    return category.__module__.split(".")[0] == "tvreg"


@contextlib.contextmanager
def _tvreg_warnings_as_lines():
    """Show each tvreg warning as one ``tvreg: warning: …`` line on stderr when it is issued
    (where a command does not collect them itself, :func:`.output.warnings_to_stderr`); other
    warnings are shown as Python shows them."""
    shown = warnings.showwarning

    def show(msg, category, filename, lineno, file=None, line=None):
        if _is_tvreg_warning(category):
            message(f"tvreg: warning: {msg}")
        else:
            shown(msg, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = show
        warnings.filterwarnings("always", category=Warning, module=r"tvreg(\.|$)")
        yield


class TvregGroup(click.Group):
    """The `tvreg` command group: one-line errors with exit code 2, and commands listed in the
    order of the docs."""

    def invoke(self, ctx: click.Context):
        try:
            with _tvreg_warnings_as_lines():
                return super().invoke(ctx)
        except TvregError as e:
            message(f"tvreg: error: {e}")
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            message("tvreg: interrupted")
            ctx.exit(130)
        except OSError as e:
            if _is_broken_pipe(e):
                # the reader went away (``tvreg sql … | head -1``): stop quietly, as Unix tools do
                _silence_stdout()
                ctx.exit(0)
            if os.environ.get("TVREG_DEBUG"):
                raise
            message(f"tvreg: error: {e}")
            ctx.exit(1)


@click.group(cls=TvregGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--registry", "registry_path", metavar="PATH|URL", envvar="TVREG_HOME",
              help="Registry folder (default: $TVREG_HOME, else ~/.tvreg), or a remote's URL "
                   "(s3://…, https://…, file://…) to read it without pulling.")
@click.option("--registry-option", "registry_options", multiple=True, metavar="KEY=VALUE",
              help="fsspec storage option for a --registry URL (e.g. endpoint_url=…), repeatable.")
@click.version_option(tvreg.__version__, prog_name="tvreg")
@click.pass_context
def cli(ctx: click.Context, registry_path: str | None, registry_options: tuple[str, ...]) -> None:
    """tvreg: a registry of task vectors (fine-tuned minus pre-trained weights)."""
    from tvreg.remote.config import parse_options

    try:
        options = parse_options(registry_options, "--registry-option") or None
        if options and not (registry_path and "://" in registry_path):
            raise tvreg.InvalidInput("--registry-option needs a --registry URL")
        ctx.obj = tvreg.open(registry_path, options=options)
    except TvregError as e:
        message(f"tvreg: error: {e}")
        ctx.exit(e.exit_code)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from . import (
        bases,
        compare,
        compose,
        ingest,
        maintenance,
        merge,
        query,
        recode,
        remote,
        serve,
        similar,
        vectors,
    )

    for module in (vectors, ingest, recode, compose, merge, compare, query, similar, bases, remote,
                   serve, maintenance):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    try:
        cli.main(prog_name="tvreg")
    except SystemExit as done:
        # what is still buffered for stdout is flushed here, where a gone reader is still quiet
        try:
            sys.stdout.flush()
        except (OSError, ValueError) as e:
            if isinstance(e, OSError) and not _is_broken_pipe(e):
                raise
            _silence_stdout()
            raise SystemExit(0) from None
        raise done


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
