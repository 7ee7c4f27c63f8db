"""Reading one preference / SFT file into examples, with the bad-record policy.

JSONL files (one record per line; blank lines are skipped) are read as bytes and decoded line
by line; Parquet files row by row. Format "hf_disk": a directory written by `datasets`'
`Dataset.save_to_disk` (Arrow IPC stream files data-NNNNN-of-NNNNN.arrow, read with pyarrow
alone), or a `DatasetDict` one (dataset_dict.json, a subdirectory per split: its "train" is
read unless the path names a split's subdirectory). Format "hf_hub": a hub dataset name, read
with `datasets.load_dataset(name, split=...)` when `datasets` is installed. Rows of Parquet and
both "hf_" formats are numbered from 0, as `datasets` indexes them.

Bad records: a line that is not valid UTF-8 or not valid JSON, a record missing a field or with
a field of the wrong type (a message that is not {"role", "content"} of strings, an unknown
role), an empty response (after stripping whitespace), identical chosen and rejected
responses. Policies (`bad_records=`):
  "error" (default): the first one raises DataError("<file>:<line>: <reason>") (Parquet and
      the "hf_" formats: "<file or directory or name>: row N: <reason>");
  "skip": bad records are skipped and counted; when more than `max_bad_fraction` (default
      0.01) of the records are bad, loading fails with the count, the fraction and the first
      reasons (`check_budget`).
A file with no records is a DataError too (`textfiles.DataError`, a ValueError: every CLI
reports it as one line with exit status 2).

A read's summary counts {"records" (non-blank lines / rows read), "kept", "skipped" (bad),
"filtered" (records of another kind, e.g. CNN/DM in TL;DR comparisons), "duplicates" (repeated
prompts dropped by kind "prompts"), "reasons" (the first MAX_REASONS "<file>:<line>: <reason>")}.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import posixpath
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import tensorflow as tf

from rso_jax import textfiles
from rso_jax.tasks import preference_formats as formats

BAD_RECORD_POLICIES = ("error", "skip")
DEFAULT_MAX_BAD_FRACTION = 0.01
MAX_REASONS = 5  # Reasons kept (and shown) per split.
COUNTS = ("records", "kept", "skipped", "filtered", "duplicates")

DataError = textfiles.DataError
Record = formats.Record


def _where(path: str, line: int, unit: str = "") -> str:
  return f"{path}:{line}" if not unit else f"{path}: {unit} {line}"


def _jsonl_objects(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, parsed JSON or a Malformed) per non-blank line; bytes decoded per line
  (`textfiles`: invalid UTF-8 is "invalid UTF-8 at byte N")."""
  with tf.io.gfile.GFile(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      bad = textfiles.invalid_utf8(raw, lineno)
      if bad:
        yield lineno, formats.Malformed(bad)
        continue
      line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
      if not line.strip():
        continue
      try:
        yield lineno, json.loads(line)
      except json.JSONDecodeError as e:
        msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Invalid control character at"
        yield lineno, formats.Malformed(f"invalid JSON ({msg} at column {e.colno})")


def _parquet_objects(path: str) -> Iterator[tuple[int, Any]]:
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
    rows = pq.read_table(pa.BufferReader(data)).to_pylist()
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{path}: cannot read as Parquet: {' '.join(str(e).split())}") from e
  for i, row in enumerate(rows):
    yield i, row


def _read_json(path: str) -> Any:
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return json.loads(f.read())
  except (tf.errors.OpError, ValueError) as e:
    raise DataError(f"{path}: cannot read as JSON: {' '.join(str(e).split())}") from e


def hf_disk_files(path: str) -> tuple[str, list[str]]:
  """(the dataset directory, its Arrow files in order) of a `save_to_disk` directory `path`;
  a `DatasetDict` directory gives its "train" split. DataError naming the directory."""
  what = "format 'hf_disk' reads a directory written by Dataset.save_to_disk"
  if not tf.io.gfile.exists(path):
    raise DataError(f"{path}: no such directory ({what})")
  if not tf.io.gfile.isdir(path):
    raise DataError(f"{path}: not a directory ({what})")
  path = path.rstrip("/") or path
  if tf.io.gfile.exists(posixpath.join(path, "dataset_dict.json")):
    info = _read_json(posixpath.join(path, "dataset_dict.json"))
    splits = info.get("splits") if isinstance(info, dict) else None
    if not isinstance(splits, list):
      raise DataError(f"{path}/dataset_dict.json: no 'splits' list ({what})")
    if "train" not in splits:
      example = posixpath.join(path, str(splits[0])) if splits else None
      raise DataError(f"{path}: a DatasetDict with splits {splits} and no 'train': give the "
                      f"directory of the split to read (e.g. {example})" if splits else
                      f"{path}: a DatasetDict with no splits")
    path = posixpath.join(path, "train")
  state_path = posixpath.join(path, "state.json")
  if tf.io.gfile.exists(state_path):
    state = _read_json(state_path)
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if (not isinstance(entries, list) or
        not all(isinstance(e, dict) and isinstance(e.get("filename"), str) for e in entries)):
      raise DataError(f"{state_path}: no '_data_files' list of {{'filename': ...}} ({what})")
    files = [posixpath.join(path, e["filename"]) for e in entries]
  else:
    files = sorted(tf.io.gfile.glob(posixpath.join(path, "*.arrow")))
  if not files:
    raise DataError(f"{path}: no Arrow data files (data-NNNNN-of-NNNNN.arrow; {what})")
  return path, files


def _hf_disk_objects(files: Sequence[str]) -> Iterator[tuple[int, Any]]:
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  i = 0
  for path in files:
    try:
      with tf.io.gfile.GFile(path, "rb") as f:
        data = pa.py_buffer(f.read())
      try:
        table = pa.ipc.open_stream(data).read_all()
      except pa.ArrowInvalid:  # An Arrow IPC file rather than a stream.
        table = pa.ipc.open_file(data).read_all()
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"{path}: cannot read as an Arrow stream: "
                      f"{' '.join(str(e).split())}") from e
    for row in table.to_pylist():
      yield i, row
      i += 1


def hub_datasets() -> Any:
  """The `datasets` module; ValueError saying how to get it when it is not installed."""
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError("format 'hf_hub' needs the Hugging Face `datasets` package: pip install "
                     "datasets (or save the dataset with Dataset.save_to_disk where it is "
                     "installed and read the directory with format 'hf_disk')") from None
  return datasets


def _hf_hub_objects(name: str, split: str) -> Iterator[tuple[int, Any]]:
  datasets = hub_datasets()
  try:
    rows = datasets.load_dataset(name, split=split)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"{name}: cannot load split {split!r} with datasets.load_dataset: "
                    f"{' '.join(str(e).split())}") from e
  yield from enumerate(rows)


def _example(obj: Any, parse: formats.Parser, kind: str) -> Record | None:
  """One record's example (None: a record of another kind); raises Malformed."""
  if isinstance(obj, formats.Malformed):
    raise obj
  if not isinstance(obj, dict):
    raise formats.Malformed(f"record must be a JSON object, got {type(obj).__name__}")
  rec = parse(obj, kind)
  if rec is not None:
    formats.check_example(rec)
  return rec


def read_file(path: str, format: str, kind: str, bad_records: str,  # pylint: disable=redefined-builtin
              chat_template: Any = formats.DEFAULT_CHAT_TEMPLATE, split: str = "train"
              ) -> tuple[list[Record], dict[str, Any]]:
  """One file (an "hf_disk" directory, an "hf_hub" name) -> (examples of read kind `kind`, its
  summary; "duplicates" is 0: see `dedup_prompts`). `chat_template` renders message lists;
  `split` is the hub split "hf_hub" reads."""
  if format == "parquet":
    objects, unit = _parquet_objects(path), "row"
  elif format == "hf_disk":
    path, files = hf_disk_files(path)
    objects, unit = _hf_disk_objects(files), "row"
  elif format == "hf_hub":
    objects, unit = _hf_hub_objects(path, split), "row"
  else:
    objects, unit = _jsonl_objects(path), ""
  parse = formats.parser(format, chat_template)
  records, reasons = [], []
  n = skipped = filtered = 0
  for lineno, obj in objects:
    n += 1
    try:
      rec = _example(obj, parse, kind)
    except formats.Malformed as e:
      reason = f"{_where(path, lineno, unit)}: {e}"
      if bad_records == "error":
        raise DataError(f"{reason} (format {format!r}; bad_records='skip' skips and counts "
                        "bad records)") from None
      skipped += 1
      if len(reasons) < MAX_REASONS:
        reasons.append(reason)
      continue
    if rec is None:
      filtered += 1
      continue
    records.append(rec)
  if filtered:
    logging.warning("%s: skipped %d CNN/DM records (info.article without info.post)", path,
                    filtered)
  if not n and unit:
    what = "file" if format == "parquet" else "dataset"
    raise DataError(f"{path}: no records: the {what} has no rows (format {format!r})")
  if not n:
    raise DataError(f"{path}:1: no records: the file is "
                    f"{'blank' if tf.io.gfile.stat(path).length else 'empty'} (format {format!r})")
  return records, {"records": n, "kept": len(records), "skipped": skipped,
                   "filtered": filtered, "duplicates": 0, "reasons": reasons}


def dedup_prompts(records: Sequence[Record]) -> list[Record]:
  """Records with a prompt not seen before (first occurrence order kept)."""
  seen, out = set(), []
  for r in records:
    if r["inputs"] not in seen:
      seen.add(r["inputs"])
      out.append(r)
  return out


def prompt_fraction(prompt: str) -> float:
  """A stable number in [0, 1) for `prompt`: its SHA-256, read as a fraction (the
  `validation_fraction` rule: the prompt is in validation iff this is below the fraction)."""
  digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def check_budget(where: str, summary: Mapping[str, Any], max_bad_fraction: float) -> None:
  """DataError when more than `max_bad_fraction` of the records are bad, or none is usable."""
  n, k = summary["records"], summary["skipped"]
  frac = k / max(n, 1)
  if k and frac > max_bad_fraction:
    raise DataError(
        f"{where}: {k} of {n} records ({frac:.2%}) are bad, more than max_bad_fraction="
        f"{max_bad_fraction:g}; first: " + "; ".join(summary["reasons"]) +
        ". Fix the data, or raise max_bad_fraction.")
  if not summary["kept"]:
    raise DataError(f"{where}: no usable records ({n} read, {k} bad, "
                    f"{summary['filtered']} not applicable)")


def check_bad_policy(bad_records: str, max_bad_fraction: float) -> None:
  if bad_records not in BAD_RECORD_POLICIES:
    raise ValueError(f"bad_records must be one of {BAD_RECORD_POLICIES}, got {bad_records!r}")
  if (isinstance(max_bad_fraction, bool) or not isinstance(max_bad_fraction, numbers.Real)
      or not 0.0 <= max_bad_fraction <= 1.0):
    raise ValueError(f"max_bad_fraction must be a number in [0, 1], got {max_bad_fraction!r}")


def read_records(path: str, format: str, kind: str | None = None, *,  # pylint: disable=redefined-builtin
                 bad_records: str = "error",
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
                 chat_template: Any = formats.DEFAULT_CHAT_TEMPLATE,
                 split: str = "train", spm_path: str | None = None) -> list[Record]:
  """Parses one file into records with keys "inputs" and "chosen"/"rejected" or "targets"
  (kind "prompts": "inputs" only, each prompt once). `kind` defaults as in
  `register_preference_file_task` ("sft" for "tldr_sft", else "pairs"); `chat_template` and
  `split` (of format "hf_hub") as in `read_file`; `spm_path`: the HF tokenizer whose chat
  template chat_template="tokenizer" renders with.

  Bad records raise DataError("<file>:<line>: <reason>") (bad_records="error"), or are skipped
  (bad_records="skip") within the `max_bad_fraction` budget (past it: DataError).
  """
  kind = kind or formats.default_kind(format)
  formats.check_format_kind(format, kind)
  check_bad_policy(bad_records, max_bad_fraction)
  template = formats.chat_template_key(chat_template, spm_path=spm_path)
  records, summary = read_file(path, format, formats.read_kind(kind), bad_records, template,
                               split)
  check_budget(path, summary, max_bad_fraction)
  return dedup_prompts(records) if kind == "prompts" else records
