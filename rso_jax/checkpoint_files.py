"""What a checkpoint's files are, and whether they are still whole.

  record_files   writes `rso_files.json` (every file of the orbax items and its size), once the
                 items are committed
  verify         what is wrong with a checkpoint directory (a missing item, orbax metadata
                 that does not parse, a listed file missing or of another size), or None;
                 one stat per file, never reading the arrays
  read_damage    the storage error behind a failed restore, when it says the bytes are damaged
  drop_pending_reads   collects the reads a failed restore left pending, quietly
  json_error     why a file's bytes are not JSON, or None
"""
from __future__ import annotations

import gc
import json
import os
import re
import sys
from typing import Optional, Sequence

from rso_jax import fs

FILES_FILE = "rso_files.json"  # the checkpoint's files and their sizes
FORMAT_VERSION = 1  # of rso_files.json


def json_error(path: str, text: bytes) -> Optional[str]:
  """Why `text` (the bytes of `path`) is not JSON, or None."""
  try:
    json.loads(text.decode("utf-8"))
  except UnicodeDecodeError as e:
    return f"{path} is not valid JSON: invalid UTF-8 at byte {e.start}"
  except json.JSONDecodeError as e:
    reason = e.msg[:-len(" at")] if e.msg.endswith(" at") else e.msg  # "...starting at"
    return f"{path} is not valid JSON: {reason} at line {e.lineno} column {e.colno}"
  return None


# Files orbax may rewrite after its items commit (checked as JSON, not by size).
_UNSIZED = ("_CHECKPOINT_METADATA", "commit_success.txt")
# orbax's JSON metadata: the step's, and each item's (tree, JSON item, nested step metadata).
_ORBAX_JSON = ("_CHECKPOINT_METADATA", "_METADATA", "metadata")
# tensorstore's status codes for bytes that are not what the checkpoint's metadata promised.
_READ_DAMAGE = re.compile(r"\b(DATA_LOSS|OUT_OF_RANGE|FAILED_PRECONDITION): Error reading .*")


def _rel(directory: str, path: str) -> str:
  rel = path[len(directory):].lstrip("/\\")
  return rel.replace(os.sep, "/")


def record_files(directory: str, items: Sequence[str]) -> str:
  """Writes `directory/rso_files.json`: the size of every file of the orbax `items` in it.

  Called once the items are committed; the file is written atomically, after all of them.
  """
  files = {}
  for item in items:
    for top, _, names in fs.walk(fs.join(directory, item)):
      for n in names:
        if n not in _UNSIZED:
          f = fs.join(top, n)
          files[_rel(directory, f)] = fs.size(f)
  path = fs.join(directory, FILES_FILE)
  fs.atomic_write_text(path, json.dumps({"format_version": FORMAT_VERSION,
                                         "files": dict(sorted(files.items()))}, indent=0))
  return path


def verify(directory: str, items: Sequence[str]) -> Optional[str]:
  """What is wrong with the checkpoint at `directory` (orbax `items` in it), or None if intact.

  Checked: each item directory is there; orbax's JSON metadata files (the step's and each
  item's) parse; and, where `rso_files.json` lists the files, each one is there with its listed
  size. Costs one stat per file and reading the small metadata files, never the arrays.
  """
  for item in ("", *items):
    d = fs.join(directory, item) if item else directory
    if item and not fs.isdir(d):
      return f"{item}/ is missing"
    for name in _ORBAX_JSON:
      f = fs.join(d, name)
      if fs.exists(f) and not fs.isdir(f):
        problem = json_error(_rel(directory, f), fs.read_bytes(f))
        if problem:
          return problem
  listing = fs.join(directory, FILES_FILE)
  if not fs.exists(listing):
    return None
  text = fs.read_bytes(listing)
  problem = json_error(FILES_FILE, text)
  if problem:
    return problem
  files = json.loads(text.decode("utf-8"))
  if not isinstance(files, dict) or not isinstance(files.get("files"), dict):
    return f"{FILES_FILE} lists no files"
  problems = []
  for rel, size in files["files"].items():
    if rel.split("/")[0] not in items:
      continue
    actual = fs.size(fs.join(directory, *rel.split("/")))
    if actual is None:
      problems.append(f"{rel} is missing")
    elif actual != size:
      problems.append(f"{rel} is {actual} bytes, {FILES_FILE} says {size}")
  if problems:
    more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
    return problems[0] + more
  return None


def read_damage(error: BaseException) -> Optional[str]:
  """The storage error behind a failed orbax restore, when it says the bytes are damaged."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    m = _READ_DAMAGE.search(str(error).splitlines()[0] if str(error) else "")
    if m:
      return m.group(0)
    error = error.__cause__ or error.__context__
  return None


def drop_pending_reads() -> None:
  """Collects the reads a failed orbax restore left pending, without the "Event loop is
  closed" each of them would print on stderr when collected later."""
  hook = sys.unraisablehook
  sys.unraisablehook = lambda *_: None
  try:
    gc.collect()
  finally:
    sys.unraisablehook = hook
