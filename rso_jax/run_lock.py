"""One writer per directory: `MODEL_DIR`, `RUN_DIR` and `SAMPLES_DIR` are locked while written.

`hold(directory, name)` creates `directory/.rso_lock` naming its holder (pid, host, start time,
command) and removes it when the block ends (done, error, SIGTERM preemption). A second command
on a locked directory raises `DirectoryLocked` (a FileExistsError: exit status 2, one line
naming the directory, the lock file and the holder).

Local paths: the file is made with an atomic exclusive create (`O_CREAT | O_EXCL`) and its
holder keeps an `flock` on it for its whole life, which the kernel drops when the holder dies.
So a lock whose holder is gone (killed, crashed) is stale: a lock from this host that nobody
holds (or, where the filesystem has no flock, whose pid is dead) is taken over, and a line
says so; it is never waited on. A lock from another host (a shared filesystem) is refused:
whether its holder still runs cannot be checked from here, and the refusal says to remove the
file once that run has ended.

URLs (`gs://`): tf.io.gfile has no exclusive create, so the lock is written after a check
that none is there: it refuses a second run started while the first holds the lock, but two
runs started at the same moment can both take it. Nothing stronger protects a bucket: keeping
one writer there is the user's job (the refusal says so).

The lock is per directory: the pipeline's main job holds `RUN_DIR`, and each stage (a
subprocess) holds its own `MODEL_DIR` / `SAMPLES_DIR` under it. A process that holds a lock
passes its identity down in RSO_JAX_LOCK_HOLDERS, so a child that locks the same directory
works under its parent's lock instead of being refused. The same process may hold one
directory twice (nested). With several JAX processes only process 0 takes the lock (see
`_is_leader`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Any, Dict, Iterator, Optional

import jax
import numpy as np

from rso_jax import fs
from rso_jax import partitioning

LOCK_FILE = ".rso_lock"
ENV_HOLDERS = "RSO_JAX_LOCK_HOLDERS"  # "host:pid" of the processes above this one holding locks

_held: Dict[str, list] = {}  # directory -> [count, fd or None]


class DirectoryLocked(FileExistsError):
  """Another command holds the directory's lock."""


def _me() -> Dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "command": " ".join(" ".join([os.path.basename(sys.argv[0] or "python")]
                                       + sys.argv[1:]).split())[:300]}


def _token(holder: Dict[str, Any]) -> str:
  return f"{holder.get('host')}:{holder.get('pid')}"


def _parse(text: str) -> Dict[str, Any]:
  try:
    holder = json.loads(text)
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


def _describe(holder: Dict[str, Any]) -> str:
  if not holder:
    return "an unknown holder (the lock file is empty or unreadable)"
  return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
          + (f" ({holder['command']})" if holder.get("command") else ""))


def _pid_alive(pid: Any) -> bool:
  try:
    os.kill(int(pid), 0)
  except (ProcessLookupError, ValueError, TypeError):
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


def _is_leader() -> bool:
  """Process 0 of a multi-process JAX run (JAX_PROCESS_ID before jax.distributed starts; with
  RSO_JAX_DISTRIBUTED=1 alone the index is not known before then, and no process locks)."""
  if jax.distributed.is_initialized():
    return jax.process_index() == 0
  if "JAX_PROCESS_ID" in os.environ:
    return os.environ["JAX_PROCESS_ID"] == "0"
  return os.environ.get("RSO_JAX_DISTRIBUTED") != "1"


def _inherited(holder: Dict[str, Any]) -> bool:
  """The holder is a process above this one that passed its lock down."""
  return bool(holder) and _token(holder) in os.environ.get(ENV_HOLDERS, "").split(",") and (
      holder.get("host") != socket.gethostname() or _pid_alive(holder.get("pid")))


def _refuse(directory: str, name: str, path: str, holder: Dict[str, Any], why: str = ""):
  raise DirectoryLocked(f"{name} {directory!r} is in use by another run: lock {path} held by "
                        f"{_describe(holder)}{why}; wait for it to finish or stop it (remove "
                        "the lock file only once that run has ended)")


def _read_fd(fd: int) -> Dict[str, Any]:
  return _parse(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))


def _stale(holder: Dict[str, Any]) -> bool:
  """A holder on this host whose process is gone."""
  return holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid"))


def _acquire_local(directory: str, name: str, path: str, print_fn) -> Optional[int]:
  """The fd (flock'd) of our lock file; None when a parent's lock covers this process."""
  for _ in range(50):  # the file removed or replaced between two steps: look again
    created = True
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      created = False
      try:
        fd = os.open(path, os.O_RDWR)
      except FileNotFoundError:
        continue
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      flocked = True
    except BlockingIOError:  # a live process holds it
      holder = _read_fd(fd)
      os.close(fd)
      if _inherited(holder):
        return None
      _refuse(directory, name, path, holder)
    except OSError:  # no flock on this filesystem: the pid alone tells a stale lock
      flocked = False
    if flocked:
      try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
      except FileNotFoundError:
        same = False
      if not same:  # released (and maybe recreated) while we waited
        os.close(fd)
        continue
    if not created:
      old = _read_fd(fd)
      if _inherited(old):
        os.close(fd)
        return None
      if not (flocked and old.get("host") in (None, socket.gethostname())) and not _stale(old):
        os.close(fd)
        _refuse(directory, name, path, old, "" if old.get("host") == socket.gethostname()
                else " (another host: whether it still runs cannot be checked from here)")
      print_fn(f"{name} {directory}: taking over the stale lock {path} of {_describe(old)}, "
               "which is no longer running")
      if not flocked:  # remove it and create ours exclusively
        os.close(fd)
        try:
          os.remove(path)
        except FileNotFoundError:
          pass
        continue
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_me()) + "\n").encode(), 0)
    os.fsync(fd)
    return fd
  raise DirectoryLocked(f"{name} {directory!r}: could not take the lock {path}: it keeps "
                        "changing (another run is starting there)")


def _acquire_url(directory: str, name: str, path: str, print_fn) -> bool:
  """Writes our lock file unless another run's is there; False when a parent's lock covers us."""
  if fs.exists(path):
    holder = _parse(fs.read_text(path))
    if _inherited(holder):
      return False
    if not _stale(holder):
      _refuse(directory, name, path, holder, " (on a bucket the lock is not atomic: keeping one "
              "writer per directory is the user's job)")
    print_fn(f"{name} {directory}: taking over the stale lock {path} of {_describe(holder)}, "
             "which is no longer running")
  fs.atomic_write_text(path, json.dumps(_me()) + "\n")
  return True


def acquire(directory: str, name: str = "MODEL_DIR", print_fn=print) -> bool:
  """Takes `directory`'s lock (creating the directory); True when this call took it.

  Raises `DirectoryLocked` when another run holds it. False: nothing to release (another JAX
  process is process 0, or a parent process's lock covers this one).
  """
  directory = fs.abspath(directory)
  if directory in _held:
    _held[directory][0] += 1
    return True
  if not _is_leader():
    return False
  fs.makedirs(directory)
  path = fs.join(directory, LOCK_FILE)
  if fs.is_url(directory):
    fd = None
    if not _acquire_url(directory, name, path, print_fn):
      return False
  else:
    fd = _acquire_local(directory, name, path, print_fn)
    if fd is None:
      return False
  _held[directory] = [1, fd]
  mine = _token(_me())
  holders = [t for t in os.environ.get(ENV_HOLDERS, "").split(",") if t]
  if mine not in holders:
    os.environ[ENV_HOLDERS] = ",".join(holders + [mine])
  return True


def release(directory: str) -> None:
  """Gives back a lock `acquire` took (the last of nested holds removes the file)."""
  directory = fs.abspath(directory)
  entry = _held.get(directory)
  if entry is None:
    return
  entry[0] -= 1
  if entry[0] > 0:
    return
  del _held[directory]
  path = fs.join(directory, LOCK_FILE)
  try:
    if entry[1] is not None:  # remove while still holding the flock, then drop it
      os.remove(path)
    elif _token(_parse(fs.read_text(path))) == _token(_me()):
      fs.remove(path)
  except (FileNotFoundError, OSError):
    pass
  finally:
    if entry[1] is not None:
      os.close(entry[1])
  if not _held:
    mine = _token(_me())
    rest = [t for t in os.environ.get(ENV_HOLDERS, "").split(",") if t and t != mine]
    if rest:
      os.environ[ENV_HOLDERS] = ",".join(rest)
    else:
      os.environ.pop(ENV_HOLDERS, None)


def is_locked(directory: str) -> bool:
  """Whether `directory` has a lock file (this process's or another run's)."""
  return fs.exists(fs.join(fs.abspath(directory), LOCK_FILE))


@contextlib.contextmanager
def hold(directory: str, name: str = "MODEL_DIR", print_fn=print,
         all_processes: bool = False) -> Iterator[str]:
  """`acquire` for the block, `release` after it, however it ends.

  `all_processes`: every JAX process learns whether process 0 took the lock and is refused
  with it (a collective: call it where every process does).
  """
  error = None
  try:
    took = acquire(directory, name, print_fn)
  except DirectoryLocked as e:
    took, error = False, e
  if all_processes:
    if int(partitioning.broadcast_from_first(np.int32(error is not None))) and error is None:
      error = DirectoryLocked(f"{name} {fs.abspath(directory)!r} is in use by another run "
                              "(process 0 was refused its lock)")
  if error is not None:
    raise error
  try:
    yield fs.abspath(directory)
  finally:
    if took:
      release(directory)
