"""What can go wrong in an rso_jax command, and how every command reports it.

  ConfigError, DataError, CheckpointError, MeshError   a user's configuration, data file,
                checkpoint or mesh is wrong: one line on stderr, exit status 2
  StageFailed   a pipeline stage's process failed: exit status 3
  Preempted     stopped by SIGTERM / SIGINT after saving what a rerun resumes from: 143
  check_int, check_number   the one place a user's number is checked (the message names the
                setting and the value)
  report        runs a command's body and maps its outcome to the exit status
  ArgumentParser   argparse whose usage error is the same one line, exit status 2

Set RSO_JAX_TRACEBACK=1 for the traceback instead of the one line.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np

# Exit statuses of every rso_jax command.
EXIT_OK = 0
EXIT_USER_ERROR = 2     # one line on stderr
EXIT_STAGE_FAILED = 3   # a pipeline stage (subprocess) failed
EXIT_PREEMPTED = 143    # 128 + SIGTERM: the checkpoint is saved, rerun the same command


class ConfigError(ValueError):
  """A configuration or input problem, reported as one line by the CLI."""


class DataError(ValueError):
  """A bad record or an unusable data file, as one line `<file>:<line>: <reason>`."""


class CheckpointError(ValueError):
  """A checkpoint that is missing, undescribed, damaged, or not of the kind the caller needs."""


class MeshError(ValueError):
  """A MESH_SHAPE that cannot be laid over the devices."""


class Preempted(Exception):
  """A run stopped by a signal after saving what a rerun resumes from (exit status 143)."""


class StageFailed(RuntimeError):
  """A stage's subprocess exited with an error (exit status 3).

  `error_line`: the stage's own one-line error (what follows `<prog>: error: `), else the last
  exception line of its traceback; carried in the message.
  """

  def __init__(self, name: str, returncode: int, error_line: Optional[str] = None):
    self.name, self.returncode, self.error_line = name, returncode, error_line
    detail = f": {error_line}" if error_line else ""
    super().__init__(f"stage {name!r} failed with exit code {returncode}{detail} (its output is "
                     f"above, prefixed [{name}]; fix it and rerun the same command: finished "
                     "stages are reused)")


# Errors a command reports as one line with exit status 2 (the input or configuration is wrong).
USER_ERRORS = (ConfigError, DataError, CheckpointError, MeshError, FileNotFoundError,
               FileExistsError, PermissionError, NotADirectoryError, IsADirectoryError)


# --------------------------------------------------------------------------------------------
# Checking a user's values
# --------------------------------------------------------------------------------------------
def is_int(v: Any) -> bool:
  """An int (Python or NumPy), not a bool."""
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_int(name: str, value: Any, minimum: int = 1, *, optional: bool = False) -> None:
  """ConfigError `NAME=value must be an int >= minimum [or None]` unless it is one."""
  if optional and value is None:
    return
  if not is_int(value) or value < minimum:
    raise ConfigError(f"{name}={value!r} must be an int >= {minimum}"
                      + (" or None" if optional else ""))


def check_number(name: str, value: Any, minimum: float = 0.0, *, strict: bool = False,
                 optional: bool = False, hint: str = "") -> None:
  """ConfigError `NAME=value must be a finite number >= minimum` (`>` when `strict`)."""
  if optional and value is None:
    return
  ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        and math.isfinite(float(value))
        and (float(value) > minimum if strict else float(value) >= minimum))
  if not ok:
    bound = f"{'>' if strict else '>='} {minimum:g}"
    raise ConfigError(f"{name}={value!r} must be a finite number {bound}"
                      + (" or None" if optional else "") + (f" ({hint})" if hint else ""))


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def one_line(e: BaseException) -> str:
  """The first line of an error (gin appends the configurable's call context below it)."""
  return (str(e).strip().splitlines() or [type(e).__name__])[0].strip()


_WRAPPED = re.compile(r"\bDataError: (.+)")


def data_error_in(e: BaseException) -> Optional[str]:
  """The one line of a DataError that TensorFlow re-raised as its own error (a reader running
  in a `tf.py_function` or a generator dataset), else None."""
  if isinstance(e, DataError):
    return str(e).strip().splitlines()[0] if str(e).strip() else None
  if not type(e).__module__.startswith("tensorflow"):
    return None
  found = _WRAPPED.findall(str(e))
  return found[-1].strip() if found else None


def report(prog: str, fn: Callable[[], Any], user_errors: Sequence[type] = USER_ERRORS) -> int:
  """Runs a command's body `fn` and returns the exit status of every rso_jax command.

  0: done. 2: a user error (`user_errors`, or a `DataError` that TensorFlow re-raised as its
  own error): one line `<prog>: error: ...` on stderr, or the traceback with
  RSO_JAX_TRACEBACK=1. 3: a pipeline stage failed (one line naming the stage, its exit status
  and its error line). 143: preempted; the checkpoint is saved and rerunning resumes.
  """
  traceback = bool(os.environ.get("RSO_JAX_TRACEBACK"))
  try:
    fn()
  except Preempted as e:
    print(f"{prog}: {one_line(e)}", file=sys.stderr)
    return EXIT_PREEMPTED
  except StageFailed as e:
    if traceback:
      raise
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    return EXIT_STAGE_FAILED
  except tuple(user_errors) as e:  # pylint: disable=catching-non-exception
    if traceback:
      raise
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    return EXIT_USER_ERROR
  except Exception as e:  # pylint: disable=broad-except
    line = data_error_in(e)  # a reader's DataError, wrapped by tf.data
    if line is None or traceback:
      raise
    print(f"{prog}: error: {line}", file=sys.stderr)
    return EXIT_USER_ERROR
  return EXIT_OK


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the rso_jax CLIs: a usage error is one line `<prog>: error: ...`, exit 2."""

  def __init__(self, *args, error_prefix: Optional[str] = None, **kwargs):
    super().__init__(*args, **kwargs)
    self.error_prefix = error_prefix or self.prog

  def error(self, message: str):
    if os.environ.get("RSO_JAX_TRACEBACK"):
      self.print_usage(sys.stderr)
    print(f"{self.error_prefix}: error: {' '.join(message.split())} (--help for usage)",
          file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
