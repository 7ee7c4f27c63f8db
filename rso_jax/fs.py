"""The one filesystem layer: local paths and URLs (`gs://`, any tf.io.gfile scheme) alike.

Every file rso_jax reads or writes (run directories, manifests, shards, reports) goes through
these functions, so `MODEL_DIR=gs://bucket/run` is a bucket path, never a local `./gs:/...`
folder. Backed by `tf.io.gfile` (as T5X and seqio are; orbax uses etils.epath, which reads the
same URLs, and tensorstore for array data). Paths are handed on as strings: a URL is never
passed through `os.path.abspath`.

Errors are the builtin ones whatever the filesystem: a missing path raises FileNotFoundError,
an existing destination FileExistsError, a refused one PermissionError, any other failure of
the filesystem OSError (tf.errors.* never escape).

`gs://` needs nothing beyond TF for tf.io.gfile; orbax's CheckpointManager on `gs://` also
imports `google-cloud-storage` (bucket metadata), which must then be installed.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import posixpath
from typing import IO, Iterator, List, Mapping, Optional


@functools.lru_cache(maxsize=None)
def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (imported on first use)
  return tf


def _gfile():
  return _tf().io.gfile


@contextlib.contextmanager
def _builtin_errors(path: str):
  """tf.errors.* -> FileNotFoundError / FileExistsError / PermissionError / OSError."""
  errors = _tf().errors
  try:
    yield
  except errors.NotFoundError as e:
    raise FileNotFoundError(2, f"no such file or directory ({e.message.splitlines()[0]})",
                            str(path)) from None
  except errors.AlreadyExistsError as e:
    raise FileExistsError(17, f"already exists ({e.message.splitlines()[0]})", str(path)) from None
  except errors.PermissionDeniedError as e:
    raise PermissionError(13, f"permission denied ({e.message.splitlines()[0]})",
                          str(path)) from None
  except errors.OpError as e:
    raise OSError(f"{path}: {e.message.splitlines()[0] if e.message else type(e).__name__}"
                  ) from None


# ------------------------------------------------------------------------------ path strings


def is_url(path: str) -> bool:
  """True for `scheme://...` paths (gs://, ram://, ...)."""
  return "://" in str(path)


def scheme(path: str) -> str:
  """The URL scheme of `path` ("gs", "ram", ...), "" for a local path."""
  path = str(path)
  return path.split("://", 1)[0] if is_url(path) else ""


def join(path: str, *parts: str) -> str:
  path = str(path)
  if is_url(path):
    return posixpath.join(path, *parts)
  return os.path.join(path, *parts)


def abspath(path: str) -> str:
  """An absolute local path (`~` expanded); URLs are returned unchanged (less a trailing /)."""
  path = str(path)
  if is_url(path):
    stripped = path.rstrip("/")
    return path if stripped.endswith(":") else stripped  # keep "gs://" itself
  return os.path.abspath(os.path.expanduser(path))


def dirname(path: str) -> str:
  path = str(path)
  return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(path)


def basename(path: str) -> str:
  path = str(path)
  return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def _resolved(path: str) -> str:
  """`abspath`, with a local path's symlinks resolved (so two spellings of one place agree)."""
  path = abspath(path)
  return path if is_url(path) else os.path.realpath(path)


def _within(inner: str, outer: str) -> bool:
  """`inner` is `outer` or lies under it (resolved paths, compared on '/' boundaries)."""
  if scheme(inner) != scheme(outer):
    return False
  sep = "/" if is_url(outer) else os.sep
  return inner == outer or inner.startswith(outer.rstrip(sep) + sep)


class OverlappingPaths(FileExistsError):
  """An output path that is, contains, or lies inside one of the command's inputs."""


def check_disjoint(out: str, inputs: Mapping[str, Optional[str]], out_name: str = "--out",
                   new_inside_ok: bool = False) -> None:
  """Refuses an output `out` that would write over an input, before anything is touched.

  `inputs`: {what the input is (e.g. "--checkpoint"): path} (None entries are skipped). `out` equal to an input,
  above it (a directory holding it) or inside it raises `OverlappingPaths` (a FileExistsError:
  every CLI's one-line user error) naming both paths; `new_inside_ok` lets `out` lie inside an
  input directory when nothing is there yet (a new file beside a checkpoint). Local paths are
  compared with their symlinks resolved, URLs by prefix on '/' boundaries.
  """
  o = _resolved(out)
  for name, path in inputs.items():
    if not path:
      continue
    i = _resolved(path)
    if o == i:
      how = "is the same path as"
    elif _within(i, o):
      how = "contains"
    elif _within(o, i) and not (new_inside_ok and not exists(o)):
      how = "lies inside"
    else:
      continue
    raise OverlappingPaths(f"{out_name} {str(out)!r} {how} {name} {str(path)!r}"
                           + (f" ({o} vs {i})" if (o, i) != (str(out), str(path)) else "")
                           + ": refusing to write over an input; choose another "
                           f"{out_name}")


# ------------------------------------------------------------------------------ queries


def exists(path: str) -> bool:
  with _builtin_errors(path):
    return _gfile().exists(str(path))


def isdir(path: str) -> bool:
  with _builtin_errors(path):
    return _gfile().isdir(str(path))


def isfile(path: str) -> bool:
  return exists(path) and not isdir(path)


def size(path: str) -> Optional[int]:
  """The size of the file at `path` in bytes, or None when there is none (one stat)."""
  if not is_url(path):
    try:
      return os.stat(path).st_size
    except FileNotFoundError:
      return None
  try:
    with _builtin_errors(path):
      return int(_gfile().stat(str(path)).length)
  except FileNotFoundError:
    return None


def listdir(path: str) -> List[str]:
  """Sorted entry names (object stores' `name/` directory markers without the slash)."""
  with _builtin_errors(path):
    return sorted({p.rstrip("/") for p in _gfile().listdir(str(path))})


def glob(pattern: str) -> List[str]:
  with _builtin_errors(pattern):
    return sorted(_gfile().glob(str(pattern)))


def glob_in(directory: str, name_pattern: str) -> List[str]:
  """Sorted paths of the entries of `directory` whose name matches `name_pattern` (fnmatch).

  Unlike `glob`, `directory` is taken literally (no escaping needed for `[`, `*`, ... in it);
  [] when `directory` does not exist.
  """
  if not isdir(directory):
    return []
  return [join(directory, n) for n in listdir(directory) if fnmatch.fnmatchcase(n, name_pattern)]


def walk(path: str) -> Iterator:
  """(dirpath, dirnames, filenames) like os.walk (names without trailing slashes)."""
  with _builtin_errors(path):
    for top, dirs, files in _gfile().walk(str(path)):
      yield str(top).rstrip("/") if is_url(top) else top, [d.rstrip("/") for d in dirs], files


# ------------------------------------------------------------------------------ reading, writing


class _File:
  """A tf.io.gfile.GFile whose errors are the builtin ones."""

  def __init__(self, path: str, mode: str):
    self._path = path
    with _builtin_errors(path):
      self._f = _gfile().GFile(path, mode)

  def __getattr__(self, name):
    attr = getattr(self._f, name)
    if not callable(attr):
      return attr

    def call(*args, **kwargs):
      with _builtin_errors(self._path):
        return attr(*args, **kwargs)
    return call

  def __iter__(self):
    with _builtin_errors(self._path):
      yield from self._f

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


def open(path: str, mode: str = "r") -> IO:  # pylint: disable=redefined-builtin
  """A file object for `path` (text modes are UTF-8). Reading a missing file raises
  FileNotFoundError here, not at the first read."""
  path = str(path)
  if "r" in mode and "+" not in mode and not exists(path):
    raise FileNotFoundError(2, "no such file", path)
  return _File(path, mode)


def read_text(path: str) -> str:
  with open(path, "r") as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def makedirs(path: str) -> None:
  """Creates `path` and its parents (no error when it exists)."""
  with _builtin_errors(path):
    _gfile().makedirs(str(path))


def remove(path: str) -> None:
  with _builtin_errors(path):
    _gfile().remove(str(path))


def rmtree(path: str) -> None:
  """Removes the directory `path` and everything under it (nothing when it is absent)."""
  if exists(path):
    with _builtin_errors(path):
      _gfile().rmtree(str(path))


def rename(src: str, dst: str, overwrite: bool = True) -> None:
  """Renames a file or directory (atomic locally; on gs:// a copy and a delete per object)."""
  with _builtin_errors(src):
    _gfile().rename(str(src), str(dst), overwrite=overwrite)


def copy(src: str, dst: str, overwrite: bool = True) -> None:
  with _builtin_errors(src):
    _gfile().copy(str(src), str(dst), overwrite=overwrite)


def copytree(src: str, dst: str) -> None:
  """Copies the directory `src` into `dst` (created), file by file, across filesystems."""
  src, dst = str(src), str(dst)
  makedirs(dst)
  for name in listdir(src):
    s, d = join(src, name), join(dst, name)
    if isdir(s):
      copytree(s, d)
    else:
      copy(s, d, overwrite=True)


def tmp_name(path: str) -> str:
  """This process's temporary name for `path` (`PATH.tmp.PID`)."""
  return f"{path}.tmp.{os.getpid()}"


# Object stores whose uploads become visible whole, when the file is closed: no temporary
# object and rename (there a copy plus a delete) is needed for an all-or-nothing write.
_WHOLE_UPLOAD_SCHEMES = ("gs", "s3")


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` so that readers see all of it or none.

  Local (and other) filesystems: a temporary file and a rename. `gs://`: one upload, which
  GCS makes visible only when it completes.
  """
  path = str(path)
  if scheme(path) in _WHOLE_UPLOAD_SCHEMES:
    with open(path, "wb") as f:
      f.write(data)
    return
  tmp = tmp_name(path)
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    rename(tmp, path, overwrite=True)
  finally:
    if exists(tmp):
      remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))
