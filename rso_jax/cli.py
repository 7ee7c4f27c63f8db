"""What every rso_jax command line shares: T5X-style gin flags, one-line errors, exit statuses.

  parse_flags / configure_gin   `--gin_file`, `--gin.NAME=VALUE`, `--gin_bindings`,
                                `--gin_search_paths`, `--stage`; a macro no binding reads is an
                                error; the experiment's task registrations run, and in a
                                stage's process its data files are checked
  invocation_flags              this process's gin flags (what a pipeline stage receives)
  checked_call                  a gin entry taking **kwargs (sample, infer): unknown or missing
                                bindings named, with the closest argument
  ArgumentParser, cli_main      argparse / any body -> the exit status of every rso_jax CLI
  removed_on_failure            nothing half-made is left behind by a failed command

Exit statuses: 0 done; 2 a user error (one line `<prog>: error: ...` on stderr;
RSO_JAX_TRACEBACK=1 for the traceback), a bad data file included (`<file>:<line>: <reason>`,
also when TensorFlow raised it wrapped); 3 a pipeline stage failed (the line carries the
stage's own error line); 143 preempted (SIGTERM: the checkpoint is saved, rerun the same
command to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import inspect
import logging
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import gin
import jax

from rso_jax import checkpoints
from rso_jax import fs
from rso_jax import partitioning
from rso_jax import pipeline
from rso_jax import textfiles
from rso_jax import trainer as trainer_lib

REPO_GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


class ConfigError(ValueError):
  """A configuration or input problem, reported as one line by the CLI."""


# Exit statuses of every rso_jax CLI.
EXIT_OK = 0
EXIT_USER_ERROR = 2        # one line on stderr; RSO_JAX_TRACEBACK=1 for the traceback
EXIT_STAGE_FAILED = 3      # a pipeline stage (subprocess) failed
EXIT_PREEMPTED = trainer_lib.EXIT_PREEMPTED  # 143: checkpoint saved, rerun to continue

# Errors a CLI reports as one line with exit status 2 (the input or the configuration is wrong).
USER_ERRORS = (ConfigError, checkpoints.CheckpointError, textfiles.DataError,
               partitioning.MeshError, FileNotFoundError, FileExistsError, PermissionError,
               NotADirectoryError, IsADirectoryError)


@contextlib.contextmanager
def removed_on_failure(path: str, keep: Callable[[str], bool] = lambda path: False):
  """Removes `path` if the body fails, when this command created it and `keep(path)` is false.

  A directory that existed before is never touched; the empty parents this command created
  along with `path` are removed too. `keep` says whether the directory holds something worth
  keeping (a checkpoint, a finished shard: what a rerun resumes from).
  """
  path = fs.abspath(path)
  created = []
  d = path
  while d and not fs.exists(d) and d != fs.dirname(d) and not d.endswith("://"):
    created.append(d)
    d = fs.dirname(d)
  try:
    yield path
  except BaseException:
    if created and jax.process_index() == 0:
      if fs.isdir(path) and not keep(path):
        try:
          fs.rmtree(path)
        except OSError:
          pass
      if not fs.exists(path):
        for parent in created[1:]:
          try:
            if fs.listdir(parent):
              break
            fs.rmtree(parent)  # only when empty
          except OSError:
            break
    raise


@dataclasses.dataclass(frozen=True)
class Flags:
  """A command line's gin flags (T5X conventions) and the pipeline stage it runs, if any."""
  files: Sequence[str]
  bindings: Sequence[str]
  search: Sequence[str]
  stage: Optional[str] = None


def parse_flags(argv: Sequence[str], doc: Optional[str] = None) -> Flags:
  """T5X flag conventions -> `Flags`; `--help` prints `doc`.

  `--stage=NAME` runs one stage of an experiment: the entry point is called under the gin
  scope NAME (`NAME/train_lib.train`, `NAME/sample.sample_configured`), as the pipeline does.
  """
  files, bindings, search = [], [], []
  stage = None
  args = list(argv)
  i = 0
  while i < len(args):
    a = args[i]
    def value():
      nonlocal i
      if "=" in a:
        return a.split("=", 1)[1]
      i += 1
      if i >= len(args):
        raise ConfigError(f"flag {a} needs a value")
      return args[i]
    if a.startswith("--gin_file"):
      files.append(value())
    elif a.startswith("--gin_bindings"):
      bindings.append(value())
    elif a.startswith("--gin_search_paths"):
      search.extend(p for p in value().split(",") if p)
    elif a.startswith("--stage"):
      stage = value().strip()
      if not stage:
        raise ConfigError("--stage needs a stage name (e.g. --stage=sft)")
    elif a.startswith("--gin."):
      if "=" not in a:
        raise ConfigError(f"{a}: use --gin.NAME=VALUE")
      name, val = a[len("--gin."):].split("=", 1)
      bindings.append(f"{name} = {val}")
    elif a in ("-h", "--help"):
      print(doc or __doc__)
      sys.exit(0)
    else:
      raise ConfigError(f"unknown flag {a!r} (use --gin_file, --gin.NAME=VALUE, "
                        "--gin_bindings, --gin_search_paths, --stage)")
    i += 1
  if not files:
    raise ConfigError("no --gin_file given")
  return Flags(files, bindings, search, stage)


_INVOCATION: Optional[Flags] = None  # what configure_gin parsed last


def invocation_flags() -> list:
  """The gin flags this process was configured with, as command-line arguments.

  A pipeline stage's subprocess receives exactly these (plus `--stage`), so it parses the same
  gin files, search paths and overrides: the whole operative configuration. Empty when gin
  was not configured through `configure_gin`.
  """
  inv = _INVOCATION
  if inv is None:
    return []
  out = [f"--gin_search_paths={p}" for p in inv.search]
  out += [f"--gin_file={f}" for f in inv.files]
  out += [f"--gin_bindings={b}" for b in inv.bindings]
  return out


def _quiet_gin_search(record: logging.LogRecord) -> bool:
  """gin logs an ERROR for every search-path candidate of an include that is not there."""
  return not str(record.msg).startswith("Path not found")


def _macro_references(value: Any, out: set) -> None:
  """Adds the names of the macros `value` references (`%NAME`, also inside containers)."""
  if isinstance(value, gin.config.ConfigurableReference):
    if value.configurable.wrapped is gin.config.macro:
      out.add("/".join(value.scopes))
  elif isinstance(value, dict):
    for k, v in value.items():
      _macro_references(k, out)
      _macro_references(v, out)
  elif isinstance(value, (list, tuple, set, frozenset)):
    for v in value:
      _macro_references(v, out)


def unread_macros() -> dict:
  """{macro: closest read macro or None} for every macro no binding reads.

  A macro is read when a binding of a configurable (any scope) references it, directly, inside
  a list / tuple / dict, or through another macro that is read. Call after parsing, before
  anything runs: a typo in a macro name (`--gin.TRAIN_STEP=2`) otherwise sets a macro nobody
  reads and the run silently uses the default.
  """
  macro_selector = gin.config._INVERSE_REGISTRY[gin.config.macro].selector  # pylint: disable=protected-access
  macros, read = {}, set()
  for (scope, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    if selector == macro_selector:
      macros[scope] = params.get("value")
    else:
      for v in params.values():
        _macro_references(v, read)
  todo = [m for m in read if m in macros]
  while todo:  # macros read through other macros
    found: set = set()
    _macro_references(macros[todo.pop()], found)
    for m in found - read:
      read.add(m)
      if m in macros:
        todo.append(m)
  known = sorted(read)
  return {m: next(iter(difflib.get_close_matches(m, known, n=1, cutoff=0.6)), None)
          for m in sorted(set(macros) - read)}


def _check_macros_read(bindings: Sequence[str], unread_in_files: Mapping[str, Any]) -> None:
  """Every macro set on the command line is read, and so is every macro the gin files set
  (`unread_in_files`: unread before the command line's bindings; one a command-line binding
  made unread by replacing its reader, e.g. `--gin.sft/train_lib.train.train_steps=0` for
  SFT_STEPS, is not an error)."""
  on_cli = {b.split("=", 1)[0].strip() for b in bindings if "=" in b}
  unread = {m: c for m, c in unread_macros().items() if m in on_cli or m in unread_in_files}
  if not unread:
    return
  parts = []
  for m, close in unread.items():
    where = f"--gin.{m}" if m in on_cli else f"macro {m} (set in a gin file)"
    parts.append(f"{where}: no binding reads macro {m}"
                 + (f"; did you mean {close}?" if close else ""))
  raise ConfigError(" | ".join(parts))


def configure_gin(files: Sequence[str], bindings: Sequence[str], search: Sequence[str],
                  stage: Optional[str] = None) -> None:
  """Parses gin files and bindings; every problem is a one-line ConfigError.

  Besides gin's own checks (unknown configurable or parameter, a `%gin.REQUIRED` macro left
  unset), every macro set on the command line or in a gin file must be read by some binding.
  Then the experiment's task registrations (`rso_jax.tasks.experiment_tasks`, when the config
  binds it) run, so every process of a run -- the main job and each stage -- sees the same
  seqio tasks; a registration that fails (a missing data file) is a ConfigError.

  In a stage's process (`stage`: its `--stage` flag) the registered file-backed tasks are then
  read once in Python
  (`preference_files.validate_task`), before the stage builds a model: a bad record is a
  one-line DataError (`<file>:<line>: <reason>`) within seconds of the stage's start.
  """
  global _INVOCATION
  _INVOCATION = Flags(tuple(files), tuple(bindings), tuple(search))
  with gin.unlock_config():
    gin.clear_config(clear_constants=False)
  gin.config._set_config_is_locked(False)  # pylint: disable=protected-access  (a re-run)
  logging.getLogger().addFilter(_quiet_gin_search)
  for p in [REPO_GIN_DIR, *search]:
    gin.add_config_file_search_path(p)
  for f in files:
    found = os.path.exists(f) or any(os.path.exists(os.path.join(p, f))
                                     for p in [REPO_GIN_DIR, *search])
    if not found:
      raise ConfigError(f"gin file {f!r} not found (searched ., {REPO_GIN_DIR}, "
                        f"{', '.join(search) or 'no extra paths'})")
  try:
    gin.parse_config_files_and_bindings(list(files), None, finalize_config=False)
    unread_in_files = unread_macros()
    gin.parse_config(list(bindings))
    _check_macros_read(bindings, unread_in_files)
    gin.finalize()  # runs the hook that names a `%gin.REQUIRED` macro left unset
  except (ValueError, KeyError, TypeError, NameError, ImportError, SyntaxError) as e:
    if isinstance(e, ConfigError):
      raise
    msg = str(e).strip().splitlines()
    raise ConfigError("gin: " + " | ".join(m.strip() for m in msg if m.strip())[:600]) from None
  registered = _register_experiment_tasks()
  if stage:
    validate_tasks(registered)


def _register_experiment_tasks() -> list:
  """The experiment's registered tasks (none when no gin file binds the hook)."""
  tasks_lib = sys.modules.get("rso_jax.tasks")  # imported by a gin file that binds it
  if tasks_lib is None:
    return []
  try:
    hook = gin.get_configurable(tasks_lib.experiment_tasks)
  except ValueError:  # no gin file binds it
    return []
  try:
    return list(hook())
  except (ValueError, KeyError, TypeError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError("task registration: " + one_line(e)) from None


def validate_tasks(tasks: Iterable[Any]) -> list:
  """Reads the files of every file-backed task among `tasks` (seqio tasks or names) once,
  in Python; the first bad one raises `textfiles.DataError`. Returns the names checked."""
  from rso_jax.tasks import preference_files  # pylint: disable=g-import-not-at-top
  checked = []
  for t in tasks:
    name = t if isinstance(t, str) else getattr(t, "name", None)
    if name and preference_files.validate_task(name):
      checked.append(name)
  return checked


def checked_call(fn: Callable, kwargs: Mapping[str, Any], name: str,
                 exclude: Iterable[str] = ("print_fn",)) -> Any:
  """`fn(**kwargs)` for a gin entry point that takes `**kwargs` (sample, infer).

  gin accepts any parameter name for a `**kwargs` function, so a misspelt binding would be a
  TypeError deep in the call: here it is a ConfigError naming the binding and the closest
  argument, as is a required argument left unbound. A CheckpointError from the call is
  reported as a one-line ConfigError.
  """
  params = inspect.signature(fn).parameters
  known = [p for p, v in params.items() if p not in set(exclude)
           and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
  unknown = sorted(set(kwargs) - set(known))
  if unknown:
    hints = []
    for u in unknown:
      close = difflib.get_close_matches(u, known, n=1, cutoff=0.6)
      hints.append(f"{name}.{u}" + (f" (did you mean {name}.{close[0]}?)" if close else ""))
    raise ConfigError(f"{name} has no argument(s) {', '.join(hints)} (known: "
                      f"{', '.join(known)})")
  missing = [p for p in known if params[p].default is inspect.Parameter.empty and p not in kwargs]
  if missing:
    raise ConfigError(f"{name} needs {', '.join(missing)}: bind {name}.{missing[0]} = ...")
  try:
    return fn(**kwargs)
  except checkpoints.CheckpointError as e:
    raise ConfigError(" ".join(str(e).split())) from None


def one_line(e: BaseException) -> str:
  """The first line of an error (gin appends the configurable's call context below it)."""
  return (str(e).strip().splitlines() or [type(e).__name__])[0].strip()


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


def cli_main(prog: str, fn: Callable[[], Any],
             user_errors: Sequence[type] = USER_ERRORS) -> int:
  """Runs a CLI's body `fn` and maps its outcome to the exit status of every rso_jax CLI.

  0: done. 2: a user error (`user_errors`, or a `textfiles.DataError` that TensorFlow
  re-raised as its own error): one line `<prog>: error: ...` on stderr, or the traceback with
  RSO_JAX_TRACEBACK=1. 3: a pipeline stage failed (one line naming the stage, its exit status
  and its error line). 143: preempted; the checkpoint is saved and rerunning resumes.
  """
  try:
    fn()
  except trainer_lib.Preempted as e:
    print(f"{prog}: {one_line(e)}", file=sys.stderr)
    return EXIT_PREEMPTED
  except pipeline.StageFailed as e:
    if os.environ.get("RSO_JAX_TRACEBACK"):
      raise
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    return EXIT_STAGE_FAILED
  except tuple(user_errors) as e:  # pylint: disable=catching-non-exception
    if os.environ.get("RSO_JAX_TRACEBACK"):
      raise
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    return EXIT_USER_ERROR
  except Exception as e:  # pylint: disable=broad-except
    line = textfiles.data_error_in(e)  # a reader's DataError, wrapped by tf.data
    if line is None or os.environ.get("RSO_JAX_TRACEBACK"):
      raise
    print(f"{prog}: error: {line}", file=sys.stderr)
    return EXIT_USER_ERROR
  return EXIT_OK
