"""The conventions of a run directory, and what a run does when it is stopped.

  COMPLETED, STATS   the marker a finished stage writes last, and a stage's statistics file
  is_complete        whether a run/stage directory holds a finished artifact
  mark_complete      writes COMPLETED (atomically, last)
  run_path           `RUN_DIR/name`: where a stage of an experiment keeps its artifact
  removed_on_failure nothing half-made is left behind by a failed command
  on_stop_signals    installs a handler for SIGTERM / SIGINT while a block runs
  PreemptionFlag     set by SIGTERM / SIGINT; a loop saves at the next step and stops

Exit statuses and the error types live in `errors` (Preempted: 143).
"""
from __future__ import annotations

import contextlib
import signal
from typing import Callable, Iterator, Optional

import jax
from jax.experimental import multihost_utils

from rso_jax import fs
from rso_jax import partitioning

COMPLETED = "COMPLETED"   # written last by a finished stage: its artifact is whole
STATS = "stats.json"      # a stage's statistics (the sampling stage's acceptance rate, ...)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def is_complete(path: str) -> bool:
  """True when `path` holds a finished stage's artifact (its COMPLETED marker)."""
  return fs.exists(fs.join(path, COMPLETED))


def mark_complete(path: str, text: str) -> None:
  """Writes `path/COMPLETED` (what `is_complete` reads); call it after everything else."""
  fs.atomic_write_text(fs.join(path, COMPLETED), text)


def run_path(run_dir: str, name: str) -> str:
  """`run_dir/name`: where a stage of the run keeps its artifact (gin: SFT_CHECKPOINT, ...)."""
  if not run_dir:
    raise ValueError("RUN_DIR is empty: pass --gin.RUN_DIR=\\\"path\\\"")
  return fs.join(fs.abspath(run_dir), name)


@contextlib.contextmanager
def removed_on_failure(path: str, keep: Callable[[str], bool] = lambda path: False
                       ) -> Iterator[str]:
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
      _remove_created(path, created, keep)
    raise


def _remove_created(path: str, created: list, keep: Callable[[str], bool]) -> None:
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


@contextlib.contextmanager
def on_stop_signals(handler: Callable[[int, object], None], *,
                    multiprocess: bool = False) -> Iterator[None]:
  """`handler` for SIGTERM and SIGINT while the block runs; the old handlers after it.

  In a multi-process run nothing is installed unless `multiprocess`: JAX's preemption service
  (started by `jax.distributed.initialize`) owns SIGTERM there, and a Python handler would
  replace it. Outside the main thread nothing can be installed.
  """
  old = {}
  if multiprocess or not partitioning.is_multiprocess():
    for sig in STOP_SIGNALS:
      try:
        old[sig] = signal.signal(sig, handler)
      except ValueError:  # not the main thread
        pass
  try:
    yield
  finally:
    for sig, previous in old.items():
      signal.signal(sig, previous)


class PreemptionFlag:
  """Set by SIGTERM (and SIGINT); the loop saves at the next step boundary and stops (the run
  then raises `errors.Preempted`).

  On several processes a signal reaches one host, not all: JAX's preemption service catches
  SIGTERM and `reached(step, ckpt)` -- orbax's synchronized check, called by every process at
  every step -- turns true on all of them at the same step, so every host saves that step and
  stops. (SIGINT is not synchronized and stops a multi-process run without a checkpoint.)
  """

  def __init__(self):
    self.requested = False
    self.signal = None
    self._signals = None

  def __enter__(self):
    self._signals = on_stop_signals(self._handle)
    self._signals.__enter__()
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    # No I/O here: a handler that prints can interrupt a print (reentrant write error). The
    # loop reports the signal when it acts on it.
    self.signal = signum
    self.requested = True

  def reached(self, step: int, ckpt: Optional[object] = None) -> bool:
    """Whether to save at `step` and stop (the same answer on every process). `ckpt`: a
    checkpoint manager with `reached_preemption(step)` (orbax's check), else JAX's."""
    if not self.requested and partitioning.is_multiprocess():
      synced = (ckpt.reached_preemption(step) if ckpt is not None
                else multihost_utils.reached_preemption_sync_point(step))
      if synced:
        self.signal, self.requested = signal.SIGTERM, True
    return self.requested

  def __exit__(self, *exc):
    return self._signals.__exit__(*exc)
