"""File-backed human-preference tasks: TL;DR comparisons / SFT, Anthropic HH, JSONL, Parquet, TFDS.

Formats (one record per line for the JSONL-based ones; blank lines are skipped):
  "tldr_comparisons"  OpenAI summarize-from-feedback comparisons: info.{subreddit,title,post},
                      summaries[0..1].text, choice (0/1). Prompt = TLDR_PROMPT; chosen =
                      summaries[choice]. Records with info.article and no info.post (the CNN/DM
                      batches) are skipped and counted in a warning.
  "tldr_sft"          OpenAI TL;DR SFT data: subreddit, title, post, summary (kind "sft" or
                      "prompts").
  "hh"                Anthropic HH-RLHF: chosen, rejected transcripts; prompt = common prefix up
                      to and including the last "\n\nAssistant:"; responses = the remainders.
  "jsonl", "parquet"  columns prompt, chosen, rejected (kind "pairs"/"rm_pairwise") or
                      prompt, response (kind "sft"); kind "prompts" needs the prompt only.
  "tfds"              a TFDS builder by name, features renamed through `tfds_field_map`.

Kind "prompts" (every file format): the prompts only, each once: a repeated prompt (e.g. a
TL;DR post that appears in many comparisons) is kept at its first occurrence and counted as a
duplicate (`bad_record_stats(name)["duplicates"]`), not as a bad record. Only the fields the
prompt is made of are read.

`validation_fraction=f` (file formats): carves a "validation" split out of "train" when no
validation file is given (a split whose path is None counts as not given, so an experiment can
bind `{'train': %TRAIN, 'validation': %VALIDATION}` with VALIDATION = None and a fraction;
a given validation file wins over the fraction): a record is in validation iff the SHA-256 of its prompt text, read as
a number in [0, 1), is below f. Tasks of any kind over the same files with the same f therefore
agree on every prompt's split, and no prompt is in both.

Bad records (file formats): a line that is not valid UTF-8 or not valid JSON, a record missing
a field or with a field of the wrong type, an empty response (after stripping whitespace),
identical chosen and rejected responses. Per task, `bad_records=`:
  "error" (default): the first one raises DataError("<file>:<line>: <reason>") (Parquet:
      "<file>: row N: <reason>");
  "skip": bad records are skipped and counted; when more than `max_bad_fraction` (default
      0.01) of a split's records are bad, loading fails with the count, the fraction and the
      first reasons. `bad_record_stats()` returns the counts for a stage to report.
A file with no records, and a split left with none, are DataErrors too (`textfiles.DataError`, a
ValueError: every CLI reports it as one line with exit status 2). `validate_task(name)` reads a
task's files once in Python, as a stage does before it builds its model.
"""
from __future__ import annotations

import functools
import hashlib
import json
import numbers
import threading
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import seqio
import tensorflow as tf

from rso_jax import textfiles
from rso_jax.tasks import preprocessors as prep
from rso_jax.tasks import sources
from rso_jax.tasks import vocab as vocab_lib

FORMATS = ("tldr_comparisons", "tldr_sft", "hh", "jsonl", "parquet", "tfds")
BAD_RECORD_POLICIES = ("error", "skip")
DEFAULT_MAX_BAD_FRACTION = 0.01
MAX_REASONS = 5  # Reasons kept (and shown) per split.
TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
HH_ASSISTANT = "\n\nAssistant:"
_DEFAULT_KIND = {"tldr_sft": "sft"}
_PAIR_KINDS = ("pairs", "rm_pairwise")
_COUNTS = ("records", "kept", "skipped", "filtered", "duplicates")

Record = dict[str, str]
DataError = textfiles.DataError


class _Malformed(Exception):
  """A record-level problem; the reader adds the file and line."""


def _where(path: str, line: int, unit: str = "") -> str:
  return f"{path}:{line}" if not unit else f"{path}: {unit} {line}"


def _field(obj: Any, dotted: str, *, allow_empty: bool = True) -> str:
  """obj[a][b]... for "a.b"; must be a string."""
  v = obj
  for part in dotted.split("."):
    if isinstance(v, list) and part.isdigit():
      idx = int(part)
      if idx >= len(v):
        raise _Malformed(f"field {dotted!r}: list has {len(v)} items, no index {idx}")
      v = v[idx]
    elif isinstance(v, dict) and part in v:
      v = v[part]
    else:
      raise _Malformed(f"missing field {dotted!r}")
  if not isinstance(v, str):
    raise _Malformed(f"field {dotted!r} must be a string, got {type(v).__name__}: {v!r:.80}")
  if not allow_empty and not v.strip():
    raise _Malformed(f"field {dotted!r} is empty")
  return v


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
  """`SUBREDDIT: r/… TITLE: … POST: … TL;DR:` (newline separated, as in the RSO/DPO setups)."""
  return TLDR_PROMPT.format(subreddit=subreddit, title=title.strip(), post=post.strip())


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
  """(prompt, chosen response, rejected response) from two HH transcripts.

  The prompt is the longest common prefix of both transcripts cut after its last
  "\n\nAssistant:"; responses are the rest, leading whitespace stripped.
  """
  n = 0
  limit = min(len(chosen), len(rejected))
  while n < limit and chosen[n] == rejected[n]:
    n += 1
  cut = chosen.rfind(HH_ASSISTANT, 0, n)
  if cut < 0 or cut + len(HH_ASSISTANT) > n:
    raise _Malformed("chosen and rejected share no prefix ending in '\\n\\nAssistant:'")
  end = cut + len(HH_ASSISTANT)
  return chosen[:end], chosen[end:].lstrip(), rejected[end:].lstrip()


# ----------------------------------------------------------------------------- record parsers


def _parse_tldr_comparison(obj: Mapping[str, Any], kind: str) -> Record | None:
  info = obj.get("info")
  if not isinstance(info, dict):
    raise _Malformed("missing object field 'info'")
  if "post" not in info and "article" in info:
    return None  # CNN/DM comparison: not a TL;DR post.
  prompt = tldr_prompt(_field(obj, "info.subreddit"), _field(obj, "info.title"),
                       _field(obj, "info.post"))
  if kind == "prompts":
    return {"inputs": prompt}
  texts = [_field(obj, f"summaries.{i}.text").strip() for i in (0, 1)]
  choice = obj.get("choice")
  if isinstance(choice, bool) or choice not in (0, 1):
    raise _Malformed(f"field 'choice' must be 0 or 1, got {choice!r}")
  if kind == "sft":
    return {"inputs": prompt, "targets": texts[choice]}
  return {"inputs": prompt, "chosen": texts[choice], "rejected": texts[1 - choice]}


def _parse_tldr_sft(obj: Mapping[str, Any], kind: str) -> Record:
  prompt = tldr_prompt(_field(obj, "subreddit"), _field(obj, "title"), _field(obj, "post"))
  if kind == "prompts":
    return {"inputs": prompt}
  return {"inputs": prompt, "targets": _field(obj, "summary", allow_empty=False).strip()}


def _parse_hh(obj: Mapping[str, Any], kind: str) -> Record:
  prompt, chosen, rejected = split_hh(_field(obj, "chosen"), _field(obj, "rejected"))
  if kind == "prompts":
    return {"inputs": prompt}
  if kind == "sft":
    return {"inputs": prompt, "targets": chosen}
  return {"inputs": prompt, "chosen": chosen, "rejected": rejected}


def _parse_generic(obj: Mapping[str, Any], kind: str) -> Record:
  if kind == "prompts":
    return {"inputs": _field(obj, "prompt")}
  if kind == "sft":  # prompt -> response; a TRL pairs file: prompt -> chosen
    prompt = _field(obj, "prompt")
    if "response" not in obj and "chosen" not in obj:
      raise _Malformed("missing field 'chosen'" if "rejected" in obj else
                       "missing field 'response' (an SFT record) or 'chosen' (a pairs record)")
    if "response" in obj:
      return {"inputs": prompt, "targets": _field(obj, "response")}
    chosen = _field(obj, "chosen")
    if not chosen.strip():
      raise _Malformed("the chosen response is empty")
    return {"inputs": prompt, "targets": chosen}
  return {"inputs": _field(obj, "prompt"), "chosen": _field(obj, "chosen"),
          "rejected": _field(obj, "rejected")}


_PARSERS = {"tldr_comparisons": _parse_tldr_comparison, "tldr_sft": _parse_tldr_sft,
            "hh": _parse_hh, "jsonl": _parse_generic, "parquet": _parse_generic}


_FIELD_NAMES = {"inputs": "prompt", "chosen": "chosen response",
                "rejected": "rejected response", "targets": "response"}


def _check_record(rec: Record) -> None:
  """Raises _Malformed for text that cannot be trained on: not encodable, empty, identical."""
  for key, value in rec.items():
    try:
      value.encode("utf-8")
    except UnicodeEncodeError as e:
      raise _Malformed(f"the {_FIELD_NAMES.get(key, key)} is not valid Unicode text "
                       f"({e.reason} at character {e.start})") from None
  for key in ("chosen", "rejected", "targets"):
    if key in rec and not rec[key].strip():
      raise _Malformed(f"the {_FIELD_NAMES[key]} is empty")
  if "chosen" in rec and rec["chosen"].strip() == rec["rejected"].strip():
    raise _Malformed("chosen and rejected responses are identical (no preference to learn)")


def _jsonl_objects(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, parsed JSON or a _Malformed) per non-blank line; bytes decoded per line
  (`textfiles`: invalid UTF-8 is "invalid UTF-8 at byte N")."""
  with tf.io.gfile.GFile(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      bad = textfiles.invalid_utf8(raw, lineno)
      if bad:
        yield lineno, _Malformed(bad)
        continue
      line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
      if not line.strip():
        continue
      try:
        yield lineno, json.loads(line)
      except json.JSONDecodeError as e:
        msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Invalid control character at"
        yield lineno, _Malformed(f"invalid JSON ({msg} at column {e.colno})")


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


def _read(path: str, format: str, kind: str, bad_records: str  # pylint: disable=redefined-builtin
          ) -> tuple[list[Record], dict[str, Any]]:
  """One file -> (records, {"records", "kept", "skipped", "filtered", "duplicates" (0: see
  `_dedup`), "reasons"})."""
  if format == "parquet":
    objects, unit = _parquet_objects(path), "row"
  else:
    objects, unit = _jsonl_objects(path), ""
  parse = _PARSERS[format]
  records, reasons = [], []
  n = skipped = filtered = 0
  for lineno, obj in objects:
    n += 1
    try:
      if isinstance(obj, _Malformed):
        raise obj
      if not isinstance(obj, dict):
        raise _Malformed(f"record must be a JSON object, got {type(obj).__name__}")
      rec = parse(obj, kind)
      if rec is not None:
        _check_record(rec)
    except _Malformed as e:
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
    raise DataError(f"{path}: no records: the file has no rows (format {format!r})")
  if not n:
    raise DataError(f"{path}:1: no records: the file is "
                    f"{'blank' if tf.io.gfile.stat(path).length else 'empty'} (format {format!r})")
  return records, {"records": n, "kept": len(records), "skipped": skipped,
                   "filtered": filtered, "duplicates": 0, "reasons": reasons}


def _dedup(records: Sequence[Record]) -> list[Record]:
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


def _check_budget(where: str, summary: Mapping[str, Any], max_bad_fraction: float) -> None:
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


def read_records(path: str, format: str, kind: str | None = None, *,  # pylint: disable=redefined-builtin
                 bad_records: str = "error",
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> list[Record]:
  """Parses one file into records with keys "inputs" and "chosen"/"rejected" or "targets"
  (kind "prompts": "inputs" only, each prompt once). `kind` defaults as in
  `register_preference_file_task` ("sft" for "tldr_sft", else "pairs").

  Bad records raise DataError("<file>:<line>: <reason>") (bad_records="error"), or are skipped
  (bad_records="skip") within the `max_bad_fraction` budget (past it: DataError).
  """
  kind = kind or _DEFAULT_KIND.get(format, "pairs")
  _check_format_kind(format, kind)
  _check_bad_policy(bad_records, max_bad_fraction)
  records, summary = _read(path, format, _read_kind(kind), bad_records)
  _check_budget(path, summary, max_bad_fraction)
  return _dedup(records) if kind == "prompts" else records


def _read_kind(kind: str) -> str:
  return kind if kind in ("sft", "prompts") else "pairs"


def _check_bad_policy(bad_records: str, max_bad_fraction: float) -> None:
  if bad_records not in BAD_RECORD_POLICIES:
    raise ValueError(f"bad_records must be one of {BAD_RECORD_POLICIES}, got {bad_records!r}")
  if (isinstance(max_bad_fraction, bool) or not isinstance(max_bad_fraction, numbers.Real)
      or not 0.0 <= max_bad_fraction <= 1.0):
    raise ValueError(f"max_bad_fraction must be a number in [0, 1], got {max_bad_fraction!r}")


# ----------------------------------------------------------------------------- bad-record counts

_BAD_STATS: dict[str, dict[str, dict[str, Any]]] = {}  # task -> split -> summary
_BAD_STATS_LOCK = threading.Lock()


def bad_record_stats(name: str | None = None) -> dict[str, Any]:
  """Bad-record counts of file-backed tasks (for the splits read so far).

  One task's dict, or {task: dict} for all: {"records" (non-blank lines / rows read), "kept"
  (examples the task yields), "skipped" (bad records skipped under bad_records="skip"),
  "filtered" (records of another kind, e.g. CNN/DM in TL;DR comparisons), "duplicates"
  (repeated prompts dropped by kind "prompts"), "reasons" (the first MAX_REASONS
  "<file>:<line>: <reason>"), "splits": {split: the same counts}}; records = kept + skipped +
  filtered + duplicates. With `validation_fraction`, the bad and filtered records of the
  carved files (which have no split) are counted in "train".
  """
  def merged(task: str) -> dict[str, Any]:
    splits = _BAD_STATS.get(task, {})
    out: dict[str, Any] = {k: sum(v.get(k, 0) for v in splits.values()) for k in _COUNTS}
    out["reasons"] = [r for v in splits.values() for r in v["reasons"]][:MAX_REASONS]
    out["splits"] = {sp: dict(v, reasons=list(v["reasons"])) for sp, v in splits.items()}
    return out

  with _BAD_STATS_LOCK:
    if name is not None:
      return merged(name)
    return {task: merged(task) for task in _BAD_STATS}


def reset_bad_record_stats(name: str | None = None) -> None:
  """Forgets the bad-record counts (of one task, or all)."""
  with _BAD_STATS_LOCK:
    if name is None:
      _BAD_STATS.clear()
    else:
      _BAD_STATS.pop(name, None)


def _check_format_kind(format: str, kind: str) -> None:  # pylint: disable=redefined-builtin
  if format not in FORMATS:
    raise ValueError(f"Unknown preference file format {format!r}; expected one of {FORMATS}")
  if kind not in sources.TASK_KINDS:
    raise ValueError(f"Unknown kind {kind!r}; expected one of {list(sources.TASK_KINDS)}")
  if format == "tldr_sft" and kind not in ("sft", "prompts"):
    raise ValueError("format 'tldr_sft' has no preference pairs; kind must be 'sft' or "
                     f"'prompts', got {kind!r}")
  if format == "tfds" and kind == "prompts":
    raise ValueError("kind 'prompts' is for the file formats, not format 'tfds' (register a "
                     "'sft' or 'pairs' task and read its inputs)")


def _expand(paths: str | Sequence[str]) -> tuple[str, ...]:
  paths = [paths] if isinstance(paths, str) else list(paths)
  out = []
  for p in paths:
    matches = sorted(tf.io.gfile.glob(p)) if any(c in p for c in "*?[") else [p]
    if not matches or not all(tf.io.gfile.exists(m) for m in matches):
      raise ValueError(f"Preference data file not found: {p!r}")
    out.extend(matches)
  return tuple(out)


@functools.lru_cache(maxsize=16)
def _load_columns(paths: tuple[str, ...], stamps: tuple[Any, ...], format: str,  # pylint: disable=redefined-builtin
                  kind: str, bad_records: str
                  ) -> tuple[Mapping[str, tuple[str, ...]], Mapping[str, Any]]:
  """(columns, bad-record summary over all `paths`): all parsed records, repeats included."""
  del stamps  # Part of the cache key only: a rewritten file is read again.
  records, total = [], {"records": 0, "kept": 0, "skipped": 0, "filtered": 0, "duplicates": 0,
                        "reasons": []}
  for p in paths:
    recs, summary = _read(p, format, kind, bad_records)
    records.extend(recs)
    for k in _COUNTS:
      total[k] += summary[k]
    total["reasons"] = (total["reasons"] + summary["reasons"])[:MAX_REASONS]
  return _to_columns(records), total


def _to_columns(records: Sequence[Record]) -> Mapping[str, tuple[str, ...]]:
  return {k: tuple(r[k] for r in records) for k in records[0]} if records else {}


def _to_records(columns: Mapping[str, Sequence[str]]) -> list[Record]:
  keys = list(columns)
  return [dict(zip(keys, row)) for row in zip(*(columns[k] for k in keys))] if keys else []


@functools.lru_cache(maxsize=16)
def _load_split(paths: tuple[str, ...], stamps: tuple[Any, ...], format: str,  # pylint: disable=redefined-builtin
                kind: str, bad_records: str, part: str | None, fraction: float | None,
                dedup: bool) -> tuple[Mapping[str, tuple[str, ...]], Mapping[str, Any],
                                      Mapping[str, Any]]:
  """(columns, this split's summary, the files' summary) of `paths`.

  `part`: None (all records), "train" or "validation" (the records whose `prompt_fraction` is
  at or above / below `fraction`). `dedup`: keep each prompt's first record only.
  """
  columns, files = _load_columns(paths, stamps, format, kind, bad_records)
  if part is None and not dedup:
    return columns, dict(files, reasons=list(files["reasons"])), files
  records = _to_records(columns)
  if part is not None:
    in_val = part == "validation"
    records = [r for r in records if (prompt_fraction(r["inputs"]) < fraction) == in_val]
  parsed = len(records)
  if dedup:
    records = _dedup(records)
  if part is None:
    summary = dict(files)
  elif part == "train":  # The records with no split (bad, filtered) are counted here.
    summary = dict(files, records=files["records"] - (files["kept"] - parsed))
  else:
    summary = {"records": parsed, "kept": parsed, "skipped": 0, "filtered": 0, "duplicates": 0,
               "reasons": []}
  summary["kept"] = len(records)
  summary["duplicates"] = parsed - len(records)
  summary["reasons"] = list(summary["reasons"])
  return _to_columns(records), summary, files


def _stamp(path: str) -> tuple[Any, ...]:
  st = tf.io.gfile.stat(path)
  return (st.length, st.mtime_nsec)


def register_preference_file_task(
    name: str,
    path: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None,
    format: str,  # pylint: disable=redefined-builtin
    *,
    kind: str | None = None,
    spm_path: str | None = None,
    truncate: str = "count",
    flip_seed: int = 0,
    rm_response_label: str = "RESPONSE",
    keep_context: str = "start",
    bad_records: str = "error",
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    validation_fraction: float | None = None,
    made_by_run: bool = False,
    tfds_name: str | None = None,
    tfds_field_map: Mapping[str, str] | None = None,
    tfds_splits: Mapping[str, str] | None = None,
    tfds_data_dir: str | None = None,
) -> seqio.Task:
  """Registers (or replaces) seqio task `name` over preference / SFT files.

  Args:
    name: task name.
    path: file path or glob, a list of them, or {split: path(s)}; a bare path is the "train"
      split. Local or any tf.io.gfile filesystem (gs://...). Unused for format "tfds".
    format: one of FORMATS.
    kind: "pairs" (inputs, chosen, rejected; the default), "rm_pairwise" (reward-ranking
      text-to-text with seeded A/B flips), "sft" (inputs -> targets; default for "tldr_sft";
      for comparison/HH formats the chosen response is the target) or "prompts" (inputs only,
      each prompt once, first occurrence order; repeats are counted in
      `bad_record_stats(name)["duplicates"]`; file formats only).
    spm_path: SentencePiece model (e.g. the T5 vocab); None = bytes.
    truncate: "count" or "error" (over-long examples are never trimmed silently). For kind
      "rm_pairwise", "count" cuts an over-long input's context, never its responses, and drops
      (and counts) an example whose responses alone do not fit: see
      `preprocessors.append_eos_and_check_length` and `truncation_stats(name)["dropped"]`.
    flip_seed: seed of the A/B flips for kind "rm_pairwise".
    rm_response_label: "RESPONSE" ([RESPONSE A], dialogue) or "SUMMARY" ([SUMMARY A], the
      paper's TL;DR tags) for kind "rm_pairwise".
    keep_context: for kind "rm_pairwise", which end of an over-long context survives the cut:
      "start" (TL;DR posts) or "end" (dialogues such as HH, where the last turn matters).
    bad_records: "error" (default: the first bad record raises ValueError("<file>:<line>:
      <reason>")) or "skip" (skip and count them; see `bad_record_stats(name)`). Bad: invalid
      UTF-8 or JSON, missing / mistyped fields, an empty response (after stripping
      whitespace), identical chosen and rejected responses. Not applied to format "tfds".
    max_bad_fraction: with bad_records="skip", loading a split fails when more than this
      fraction of its records are bad (the message gives the count, the fraction and the
      first reasons). Default 0.01.
    validation_fraction: a number in (0, 1), or None. Carves the "validation" split out of
      "train" (a bare path, or a mapping with "train" and no "validation", or a None one): a record is in
      validation iff `prompt_fraction(prompt) < validation_fraction` (SHA-256 of the prompt
      text), so tasks of every kind over the same files with the same fraction agree on each
      prompt's split and no prompt is in both. Reading a carved split with no records raises
      ValueError. File formats only.
    made_by_run: the files are written by an earlier stage of the same run (the collection
      stage's on-policy pairs): they are looked up when a split is first read, not here, so
      every process of the run can register the task before they exist. Default False: a
      missing file is a ValueError at registration.
    tfds_name: TFDS builder "name[:version]" for format "tfds" (read by seqio.TfdsDataSource).
    tfds_field_map: {our field: TFDS feature path ('/' for nesting)}, our fields being
      prompt, chosen, rejected (pairs) or prompt, response (sft).
    tfds_splits: {our split: TFDS split}, default {"train": "train", "validation": "validation"}.
    tfds_data_dir: TFDS data directory.

  Returns:
    The registered seqio.Task.
  """
  kind = kind or _DEFAULT_KIND.get(format, "pairs")
  _check_format_kind(format, kind)
  _check_bad_policy(bad_records, max_bad_fraction)
  _check_validation_fraction(name, validation_fraction, format, path)
  vocabulary = vocab_lib.get_vocabulary(spm_path)
  if format == "tfds":
    if bad_records != "error":
      raise ValueError(f"register_preference_file_task({name!r}): bad_records={bad_records!r} "
                       "applies to the file formats, not to format 'tfds'")
    return _register_tfds(name, kind, vocabulary, truncate, flip_seed, rm_response_label,
                          keep_context,
                          tfds_name, tfds_field_map, tfds_splits, tfds_data_dir)
  if path is None or (not isinstance(path, (str, Mapping)) and not list(path)):
    raise ValueError(f"register_preference_file_task({name!r}): path is required for format "
                     f"{format!r}")
  split_paths = dict(path) if isinstance(path, Mapping) else {"train": path}
  split_paths = {split: p for split, p in split_paths.items() if p is not None}
  carved = {}  # split -> its part of the train files ("train" or "validation")
  if validation_fraction is not None and "validation" not in split_paths:
    split_paths["validation"] = split_paths["train"]
    carved = {"train": "train", "validation": "validation"}
  if made_by_run:
    expand = lambda split: _expand(split_paths[split])
  else:
    expanded = {split: _expand(p) for split, p in split_paths.items()}
    expand = expanded.__getitem__
  reset_bad_record_stats(name)  # A re-registered task counts its own files only.
  read_kind = _read_kind(kind)

  def columns_fn(split: str) -> Mapping[str, Sequence[str]]:
    paths = expand(split)
    columns, summary, files = _load_split(
        paths, tuple(_stamp(p) for p in paths), format, read_kind, bad_records,
        carved.get(split), validation_fraction if split in carved else None,
        kind == "prompts")
    with _BAD_STATS_LOCK:
      new = _BAD_STATS.setdefault(name, {}).get(split) != summary
      _BAD_STATS[name][split] = dict(summary, reasons=list(summary["reasons"]))
    where = f"Task {name!r} split {split!r}"
    _check_budget(where, files, max_bad_fraction)  # The budget is the files' (carved or not).
    if not summary["kept"]:
      raise DataError(
          f"{where}: no records: validation_fraction={validation_fraction:g} put none of the "
          f"{files['kept']} usable records of {list(paths)} in this split; change "
          "validation_fraction or give a 'validation' file")
    if new and files["skipped"]:
      logging.warning("%s: skipped %d of %d records (%.2f%%) as bad (bad_records='skip'); "
                      "first: %s", where, files["skipped"], files["records"],
                      100.0 * files["skipped"] / files["records"],
                      "; ".join(files["reasons"]))
    if new and summary["duplicates"]:
      logging.info("%s: %d prompts, %d repeats dropped", where, summary["kept"],
                   summary["duplicates"])
    return columns

  source = sources.InMemoryDataSource(columns_fn, splits=list(split_paths))
  if not made_by_run:  # files the run writes are not checked up front
    with _BAD_STATS_LOCK:
      _VALIDATORS[name] = (source, lambda: [columns_fn(split) for split in split_paths])
  return sources.add_task(name, source, kind, vocabulary, truncate=truncate, flip_seed=flip_seed,
                          rm_response_label=rm_response_label, keep_context=keep_context)


_VALIDATORS: dict[str, Any] = {}  # task -> (its data source, reads every split of its files)


def validate_task(name: str) -> bool:
  """Reads every split of file-backed task `name` once, in Python (no tf.data, no model), with
  the checks the task's data source makes: a bad record, a file without records, an exhausted
  skip budget or an empty split raises DataError ("<file>:<line>: <reason>").

  False (nothing read) for a task that is not file-backed here (format "tfds", another task
  kind) or whose files the run writes (`made_by_run`). The parsed records are not kept.
  """
  with _BAD_STATS_LOCK:
    source, check = _VALIDATORS.get(name, (None, None))
  task = seqio.TaskRegistry.get(name) if name in seqio.TaskRegistry.names() else None
  if check is None or task is None or task.source is not source:  # since replaced
    return False
  try:
    check()
  finally:
    _load_split.cache_clear()
    _load_columns.cache_clear()
  return True


def _check_validation_fraction(name: str, fraction: Any, format: str,  # pylint: disable=redefined-builtin
                               path: Any) -> None:
  if fraction is None:
    return
  where = f"register_preference_file_task({name!r})"
  if (isinstance(fraction, bool) or not isinstance(fraction, numbers.Real)
      or not 0.0 < fraction < 1.0):
    raise ValueError(f"{where}: validation_fraction must be a number in (0, 1) (exclusive), "
                     f"got {fraction!r}")
  if format == "tfds":
    raise ValueError(f"{where}: validation_fraction applies to the file formats, not to format "
                     "'tfds' (use tfds_splits)")
  if isinstance(path, Mapping):
    if "train" not in path:
      raise ValueError(f"{where}: validation_fraction={fraction!r} carves validation out of the "
                       f"'train' split, but path has splits {sorted(path)} and no 'train'")


def _register_tfds(name, kind, vocabulary, truncate, flip_seed, rm_response_label, keep_context,
                   tfds_name, field_map, splits, data_dir) -> seqio.Task:
  if not tfds_name:
    raise ValueError(f"register_preference_file_task({name!r}): format 'tfds' needs tfds_name")
  needed = ("prompt", "response") if kind == "sft" else ("prompt", "chosen", "rejected")
  field_map = dict(field_map or {f: f for f in needed})
  missing = [f for f in needed if f not in field_map]
  if missing:
    raise ValueError(f"tfds_field_map for {tfds_name!r} lacks {missing}; needs {list(needed)}")
  ours = {"prompt": "inputs", "response": "targets", "chosen": "chosen", "rejected": "rejected"}
  key_map = {ours[f]: field_map[f] for f in needed}
  source = seqio.TfdsDataSource(
      tfds_name=tfds_name, tfds_data_dir=data_dir,
      splits=dict(splits or {"train": "train", "validation": "validation"}))
  rekey = functools.partial(prep.rekey_nested, key_map=key_map)
  return sources.add_task(name, source, kind, vocabulary, truncate=truncate,
                          flip_seed=flip_seed, rm_response_label=rm_response_label,
                          keep_context=keep_context, pre_tokenize=[rekey])
