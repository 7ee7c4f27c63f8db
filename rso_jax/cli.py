"""The gin command line every rso_jax stage shares (T5X's flags), and its generic runner.

  parse_flags / configure_gin   `--gin_file`, `--gin.NAME=VALUE`, `--gin_bindings`,
                                `--gin_search_paths`, `--stage`; a macro no binding reads is an
                                error; the experiment's task registrations run, and in a
                                stage's process its data files are checked
  invocation_flags              this process's gin flags (what a pipeline stage receives)
  checked_call                  a gin entry taking **kwargs (sample, infer): unknown or missing
                                bindings named, with the closest argument
  run_configured, main          a gin-configured entry function, under its stage's scope, as a
                                command (`python -m rso_jax.train|sample|infer`)
  run_stage                     a pipeline stage as its own process with this process's gin
                                flags: its output prefixed, its failure one line, signals
                                forwarded

Exit statuses and one-line errors: `rso_jax.errors` (0 done; 2 a user error; 3 a pipeline
stage failed; 143 preempted).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
import re
import signal
import subprocess
import sys
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import gin

from rso_jax import errors
from rso_jax import runs
from rso_jax.errors import ConfigError
from rso_jax.tasks import preference_files

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# The gin files: inside the installed package (rso_jax/gin), else the repository's gin/.
GIN_DIR = (os.path.join(_PACKAGE_DIR, "gin") if os.path.isdir(os.path.join(_PACKAGE_DIR, "gin"))
           else os.path.join(os.path.dirname(_PACKAGE_DIR), "gin"))


def find_gin_file(name: str, search: Sequence[str] = ()) -> Optional[str]:
  """The path of gin file `name`: as given (from the working directory), else under the search
  paths (`GIN_DIR` first); `gin/...`, the repository's spelling, also resolves under `GIN_DIR`,
  so the README's commands run from any directory. None when there is none."""
  candidates = [name] + [os.path.join(p, name) for p in (GIN_DIR, *search)]
  if name.startswith("gin/"):
    candidates.append(os.path.join(GIN_DIR, name[len("gin/"):]))
  return next((c for c in candidates if os.path.isfile(c)), None)


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


def _tolerant_gin_file_readers() -> None:
  """gin's package-path reader takes an include's first folder for a Python package, and a
  folder of that name in the working directory (a namespace package without a file) makes it
  raise: `include 'models/tiny.gin'` run where a `models/` folder exists. Its existence check
  answers "no" there instead, so the search goes on to the next path."""
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  for i, (reader, exists) in enumerate(readers):
    if getattr(exists, "tolerant", False):
      continue

    def tolerant(path, exists=exists):
      try:
        return exists(path)
      except (TypeError, ValueError, ImportError):
        return False
    tolerant.tolerant = True
    readers[i] = (reader, tolerant)


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
  _tolerant_gin_file_readers()
  for p in [GIN_DIR, *search]:
    gin.add_config_file_search_path(p)
  paths = []
  for f in files:
    paths.append(find_gin_file(f, search))
    if paths[-1] is None:
      raise ConfigError(f"gin file {f!r} not found (searched ., {GIN_DIR}, "
                        f"{', '.join(search) or 'no extra paths'})")
  try:
    gin.parse_config_files_and_bindings(paths, None, finalize_config=False)
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
    raise ConfigError("task registration: " + errors.one_line(e)) from None


def validate_tasks(tasks: Iterable[Any]) -> list:
  """Reads the files of every file-backed task among `tasks` (seqio tasks or names) once,
  in Python; the first bad one raises `textfiles.DataError`. Returns the names checked."""
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
  except errors.CheckpointError as e:
    raise ConfigError(" ".join(str(e).split())) from None


def _scopes_of(entry: Callable) -> set:
  """The gin scopes that bind `entry` (the stages a config defines for it)."""
  selector = gin.config._INVERSE_REGISTRY[entry].selector  # pylint: disable=protected-access
  return {scope for (scope, sel) in gin.config._CONFIG if sel == selector and scope}  # pylint: disable=protected-access


def run_configured(entry: Callable, stage: Optional[str] = None,
                   stage_kwargs: Optional[Mapping[str, Any]] = None) -> Any:
  """Calls the gin-configured `entry`, under gin scope `stage` if given (then with
  `stage_kwargs`: a stage run builds that stage's artifact only, e.g. a training entry
  without its prerequisites)."""
  fn = gin.get_configurable(entry)
  if stage:
    scopes = _scopes_of(entry)
    if stage not in scopes:
      raise ConfigError(f"--stage={stage}: the configuration binds no stage {stage!r} for "
                        f"{entry.__module__}.{entry.__name__} (its stages: "
                        f"{', '.join(sorted(scopes)) or 'none'})")
  try:
    if stage:
      with gin.config_scope(stage):
        return fn(**dict(stage_kwargs or {}))
    return fn()
  except (ValueError, KeyError) as e:
    if "Required bindings" in str(e) or "gin" in type(e).__module__:
      raise ConfigError("gin: " + " ".join(str(e).split())[:600]) from None
    raise


def main(argv: Optional[Sequence[str]], entry: Callable,
         stage_kwargs: Optional[Mapping[str, Any]] = None) -> int:
  """`python -m <entry's module> --gin_file=... [--stage=NAME]`: parses the flags, configures
  gin, runs `entry`; returns the exit status (`errors.report`)."""
  logging.basicConfig(level=logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  argv = sys.argv[1:] if argv is None else argv
  module = sys.modules[entry.__module__]

  def run():
    flags = parse_flags(argv, module.__doc__)
    configure_gin(flags.files, flags.bindings, flags.search, stage=flags.stage)
    run_configured(entry, flags.stage, stage_kwargs)
  return errors.report("rso_jax." + entry.__module__.split(".")[-1], run)


# ------------------------------------------------------------------------------ stage processes
def run_stage(name: str, module: str, extra_bindings: Sequence[str] = (),
         flags: Optional[Sequence[str]] = None) -> None:
  """Runs `python -m module <this run's gin flags> --stage=name`, its output prefixed `[name]`.

  `flags` default to the gin flags this process was configured with (`cli.invocation()`), so
  the stage reads the whole operative configuration; `extra_bindings` are appended (what the
  pipeline decides for the stage, e.g. its output directory).

  Raises `StageFailed` on a non-zero exit, `errors.Preempted` when the stage was stopped by
  SIGTERM / SIGINT (its exit status 143, or killed by the signal, or a signal this process
  received and forwarded to it while it ran).
  """
  if flags is None:
    flags = invocation_flags()
  cmd = [sys.executable, "-m", module, *flags, f"--stage={name}"]
  cmd += [f"--gin_bindings={b}" for b in extra_bindings]
  print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
  # The stage imports this very rso_jax, whatever the working directory.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1, env=env)
  forwarded = []

  def forward(signum, frame):  # pylint: disable=unused-argument
    forwarded.append(signum)
    try:
      proc.send_signal(signum)
    except ProcessLookupError:
      pass

  error_line = exception_line = None
  with runs.on_stop_signals(forward, multiprocess=True):
    assert proc.stdout is not None
    for line in proc.stdout:
      if is_noise(line):
        continue
      if line.startswith("rso_jax.") and ": error: " in line:
        error_line = line.split(": error: ", 1)[1].strip()
      elif _EXCEPTION_LINE.match(line):
        exception_line = line.strip()
      print(f"[{name}] {line}", end="", flush=True)
    rc = proc.wait()
  stopped = rc in (errors.EXIT_PREEMPTED, -signal.SIGTERM, -signal.SIGINT)
  if stopped or (forwarded and rc != 0):
    raise errors.Preempted(f"preempted: stage {name!r} stopped (exit code {rc}) with what it "
                            "finished saved; rerun the same command to continue")
  if rc:
    detail = error_line or exception_line
    raise errors.StageFailed(name, rc, detail if detail is None or len(detail) <= 600
                      else detail[:600] + " ...")
  if forwarded:
    raise errors.Preempted(f"preempted after stage {name!r} finished; rerun the same command "
                            "to continue")


# The last line of a Python traceback: `ValueError: ...`, `jax.errors.JaxRuntimeError: ...`.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)(?::\s|$)")


def is_noise(line: str) -> bool:
  """A line of TensorFlow / XLA start-up chatter (not shown in a stage's output)."""
  return any(s in line for s in ("cuda", "oneDNN", "absl::InitializeLog", "TF_ENABLE_ONEDNN",
                                 "FunctionDataset", "computation placer"))
