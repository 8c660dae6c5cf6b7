"""A user's command as an ``evaluate(state_dict) -> float``: the model written to a temporary
safetensors file, the command run on it, its score read from the last line of its stdout.

Invariants: the command is run without a shell (``shlex.split`` of a string, or an argument
list as given), with ``{model}`` in its arguments replaced by the file's path; its executable
and the ``{model}`` placeholder are checked when the evaluator is made, before any merge.
At most one model file exists at a time, in a private temporary folder that :meth:`close`
removes (also on an error or an interrupt, when the caller closes it in ``finally`` or uses
``with``). A command that fails (non-zero exit, killed) is :class:`EvalCommandFailed` (exit
1); one that succeeds without a finite number on the last non-empty line of its stdout is
:class:`EvalOutputError` (bad input, exit 2: the command does not do what a score command
must). The command's stderr is not captured: the user sees it as it runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import Any

from tvreg.errors import InvalidInput, TvregError

PLACEHOLDER = "{model}"


class EvalCommandFailed(TvregError):
    """The evaluation command exited with a non-zero status (or was killed)."""


class EvalOutputError(InvalidInput):
    """The evaluation command succeeded but its last line of stdout is not a finite number."""


def command_args(command: str | Sequence[str], what: str = "eval command") -> list[str]:
    """The argument list of ``command`` (a string split as a POSIX shell would, without running
    one; or a list), checked: non-empty, naming ``{model}``, its program found."""
    if isinstance(command, str):
        try:
            args = shlex.split(command)
        except ValueError as e:
            raise InvalidInput(f"{what} {command!r}: {e}") from None
    elif isinstance(command, Sequence) and all(isinstance(a, str) for a in command):
        args = list(command)
    else:
        raise InvalidInput(f"{what} must be a string or a list of strings, not "
                           f"{type(command).__name__}")
    if not args:
        raise InvalidInput(f"{what} is empty")
    if not any(PLACEHOLDER in a for a in args):
        raise InvalidInput(f"{what} {shlex.join(args)!r} does not name the model: put "
                           f"{PLACEHOLDER} where its path goes")
    if shutil.which(args[0]) is None:
        raise InvalidInput(f"{what}: {args[0]!r} is not an executable program (not found, or "
                           "not executable)")
    return args


def parse_score(stdout: str) -> float | None:
    """The finite number on the last non-empty line of ``stdout``, else None."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        value = float(lines[-1])
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class CommandEvaluator:
    """``evaluator(state_dict) -> float`` through an external command (see the module).

    ``label`` (set by the caller before each call, e.g. ``"ties at lambda 0.4"``) goes into the
    error messages. ``work_dir``: where the temporary folder is made (default: the system's
    temporary directory, ``$TMPDIR``)."""

    def __init__(self, command: str | Sequence[str], *, what: str = "eval command",
                 work_dir: str | os.PathLike | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        self.args = command_args(command, what)
        #: the command as the messages show it: as the user wrote it
        self.shown = command if isinstance(command, str) else shlex.join(self.args)
        self.what = what
        if work_dir is not None and not os.path.isdir(work_dir):
            raise InvalidInput(f"work folder {os.fspath(work_dir)!r} is not a folder")
        self.work_dir = None if work_dir is None else os.fspath(work_dir)
        self.metadata = dict(metadata or {})
        self.label = ""
        self._dir: str | None = None
        self.calls = 0

    def folder(self) -> str:
        """The private temporary folder (made on first use)."""
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="tvreg-eval-", dir=self.work_dir)
        return self._dir

    def write(self, state_dict: dict, path: str) -> None:
        """``state_dict`` as a safetensors file, tensors in name order (as apply writes them),
        with this evaluator's metadata."""
        from tvreg.dtypes import dtype_name
        from tvreg.tensors.safetensors_io import write_safetensors

        names = sorted(state_dict)
        specs = [(n, dtype_name(state_dict[n].dtype), tuple(state_dict[n].shape)) for n in names]
        write_safetensors(path, specs, ((n, state_dict[n]) for n in names),
                          {**self.metadata, "tvreg.eval": self.label} if self.label
                          else self.metadata or None)

    def __call__(self, state_dict: dict) -> float:
        self.calls += 1
        path = os.path.join(self.folder(), f"model-{self.calls}.safetensors")
        try:
            self.write(state_dict, path)
            args = [a.replace(PLACEHOLDER, path) for a in self.args]
            where = f" ({self.label})" if self.label else ""
            try:
                proc = subprocess.run(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      text=True, errors="replace", check=False)
            except OSError as e:  # vanished or not runnable since the check
                raise EvalCommandFailed(f"{self.what} {self.shown!r} could not run"
                                        f"{where}: {e.strerror or e}") from None
            if proc.returncode != 0:
                status = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                          else f"exit status {proc.returncode}")
                raise EvalCommandFailed(f"{self.what} {self.shown!r} failed{where}: "
                                        f"{status}")
            score = parse_score(proc.stdout)
            if score is None:
                last = next((line.strip() for line in reversed(proc.stdout.splitlines())
                             if line.strip()), "")
                shown = repr(last[:80]) if last else "nothing"
                raise EvalOutputError(f"{self.what} {self.shown!r} printed {shown} "
                                      f"as its last line{where}: it must print the score, a "
                                      "finite number, on the last line of its stdout")
            return score
        finally:
            with contextlib.suppress(FileNotFoundError):  # the write failed before making it
                os.remove(path)

    def close(self) -> None:
        """Remove the temporary folder and anything left in it."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> CommandEvaluator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

