"""How every rso_jax command reads a user's text file (preference data, prompts files).

  DataError     (errors.DataError) a problem in a data file: one line `<file>:<line>: <reason>`
  decode_line   one line's bytes -> str; invalid UTF-8 is `<file>:<line>: invalid UTF-8 at
                byte N (0xXX)`, N counted from 1 within the line
  read_lines    (line number, text) of a whole file, read as bytes and decoded line by line

Lines are split on b"\\n" only, so the line numbers are an editor's; a UTF-8 byte-order mark at
the start of the file is dropped.
"""
from __future__ import annotations

from typing import Iterator, Optional

from rso_jax import fs
from rso_jax.errors import DataError

BOM = b"\xef\xbb\xbf"


def invalid_utf8(raw: bytes, lineno: int) -> Optional[str]:
  """The reason `raw` (line `lineno`, from 1) is not UTF-8, or None when it is."""
  offset = len(BOM) if lineno == 1 and raw.startswith(BOM) else 0
  try:
    raw[offset:].decode("utf-8")
  except UnicodeDecodeError as e:
    at = offset + e.start
    return f"invalid UTF-8 at byte {at + 1} (0x{raw[at]:02x})"
  return None


def decode_line(raw: bytes, path: str, lineno: int) -> str:
  """Line `lineno` (from 1) of `path` as text; DataError naming `path:lineno` and the byte."""
  try:
    return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
  except UnicodeDecodeError:
    raise DataError(f"{path}:{lineno}: {invalid_utf8(raw, lineno)}") from None


def read_lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number from 1, text with its newline) for each line of `path` (any `rso_jax.fs`
  path); the first line that is not UTF-8 raises DataError."""
  with fs.open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      yield lineno, decode_line(raw, path, lineno)
