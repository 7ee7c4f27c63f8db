"""File-backed human-preference tasks: TL;DR comparisons / SFT, Anthropic HH, JSONL, Parquet,
`datasets` directories (`save_to_disk`) and hub datasets, TFDS.

`register_preference_file_task(name, path, format, kind=..., chat_template=...)` registers a
seqio task over files of one of FORMATS (`preference_formats`: what each format's records hold,
TRL's dataset shapes detected per record, and how a prompt and its responses are made of them;
`chat_template` renders message lists), read in Python when a split is first used
(`preference_reader`: one file at a time, with the bad-record policy). Format "hf_disk": each
path is a `save_to_disk` directory; "hf_hub": each path is a hub dataset name, loaded with the
split being read (a carved validation split: "train").

Kind "prompts" (every file format): the prompts only, each once: a repeated prompt (e.g. a
TL;DR post that appears in many comparisons) is kept at its first occurrence and counted as a
duplicate (`bad_record_stats(name)["duplicates"]`), not as a bad record. Only the fields the
prompt is made of are read.

`validation_fraction=f` (file formats): carves a "validation" split out of "train" when no
validation file is given (a split whose path is None counts as not given, so an experiment can
bind `{'train': %TRAIN, 'validation': %VALIDATION}` with VALIDATION = None and a fraction;
a given validation file wins over the fraction): a record is in validation iff the SHA-256 of
its prompt text, read as a number in [0, 1), is below f (`prompt_fraction`). Tasks of any kind
over the same files with the same f therefore agree on every prompt's split, and no prompt is
in both.

Bad records (file formats; `preference_reader`): with bad_records="error" (default) the first
one raises DataError("<file>:<line>: <reason>"); with "skip" they are skipped and counted, and
loading a split fails when more than `max_bad_fraction` (default 0.01) of its files' records are
bad. `bad_record_stats()` returns the counts for a stage to report. A file with no records, and
a split left with none, are DataErrors too (`textfiles.DataError`, a ValueError: every CLI
reports it as one line with exit status 2). `validate_task(name)` reads a task's files once in
Python, as a stage does before it builds its model.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
import posixpath
import threading
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import seqio
import tensorflow as tf

from rso_jax.tasks import preference_formats as formats
from rso_jax.tasks import preference_reader as reader
from rso_jax.tasks import preprocessors as prep
from rso_jax.tasks import sources
from rso_jax.tasks import vocab as vocab_lib

# The file formats and the reader, under the names users of this module know.
FORMATS = formats.FORMATS
TLDR_PROMPT = formats.TLDR_PROMPT
HH_ASSISTANT = formats.HH_ASSISTANT
Record = formats.Record
tldr_prompt = formats.tldr_prompt
split_hh = formats.split_hh
BAD_RECORD_POLICIES = reader.BAD_RECORD_POLICIES
DEFAULT_MAX_BAD_FRACTION = reader.DEFAULT_MAX_BAD_FRACTION
MAX_REASONS = reader.MAX_REASONS
DataError = reader.DataError
prompt_fraction = reader.prompt_fraction
read_records = reader.read_records

# ----------------------------------------------------------------------------- bad-record counts

_BAD_STATS: dict[str, dict[str, dict[str, Any]]] = {}  # task -> split -> summary
_BAD_STATS_LOCK = threading.Lock()
_VALIDATORS: dict[str, Any] = {}  # task -> (its data source, reads every split of its files)


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
    out: dict[str, Any] = {k: sum(v.get(k, 0) for v in splits.values()) for k in reader.COUNTS}
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


def _record_bad_stats(name: str, split: str, summary: Mapping[str, Any]) -> bool:
  """Stores one split's counts; whether they differ from the ones stored before."""
  with _BAD_STATS_LOCK:
    new = _BAD_STATS.setdefault(name, {}).get(split) != summary
    _BAD_STATS[name][split] = dict(summary, reasons=list(summary["reasons"]))
  return new


# ----------------------------------------------------------------------------- reading a split


def _expand(paths: str | Sequence[str], format: str) -> tuple[str, ...]:  # pylint: disable=redefined-builtin
  paths = [paths] if isinstance(paths, str) else list(paths)
  if format == "hf_hub":  # Hub dataset names.
    return tuple(paths)
  out = []
  for p in paths:
    matches = sorted(tf.io.gfile.glob(p)) if any(c in p for c in "*?[") else [p]
    if not matches or not all(tf.io.gfile.exists(m) for m in matches):
      if format == "hf_disk":
        raise DataError(f"Preference data directory not found: {p!r} (format 'hf_disk' reads a "
                        "directory written by Dataset.save_to_disk)")
      raise ValueError(f"Preference data file not found: {p!r}")
    out.extend(matches)
  return tuple(out)


def _stamp(path: str, format: str) -> tuple[Any, ...]:  # pylint: disable=redefined-builtin
  """What a rewritten file changes (of a directory: its files'); nothing of a hub name."""
  if format == "hf_hub":
    return ()
  if format == "hf_disk" and tf.io.gfile.isdir(path):
    return tuple((posixpath.join(d, f), *_stamp(posixpath.join(d, f), "file"))
                 for d, _, files in sorted(tf.io.gfile.walk(path)) for f in sorted(files))
  st = tf.io.gfile.stat(path)
  return (st.length, st.mtime_nsec)


def _to_columns(records: Sequence[Record]) -> Mapping[str, tuple[str, ...]]:
  return {k: tuple(r[k] for r in records) for k in records[0]} if records else {}


def _to_records(columns: Mapping[str, Sequence[str]]) -> list[Record]:
  keys = list(columns)
  return [dict(zip(keys, row)) for row in zip(*(columns[k] for k in keys))] if keys else []


@functools.lru_cache(maxsize=16)
def _load_columns(paths: tuple[str, ...], stamps: tuple[Any, ...], format: str,  # pylint: disable=redefined-builtin
                  kind: str, bad_records: str, chat_template: formats.TemplateKey,
                  hub_split: str | None
                  ) -> tuple[Mapping[str, tuple[str, ...]], Mapping[str, Any]]:
  """(columns, bad-record summary over all `paths`): all parsed records, repeats included.
  `hub_split`: the split format "hf_hub" loads (None for the other formats)."""
  del stamps  # Part of the cache key only: a rewritten file is read again.
  records, total = [], {"records": 0, "kept": 0, "skipped": 0, "filtered": 0, "duplicates": 0,
                        "reasons": []}
  for p in paths:
    recs, summary = reader.read_file(p, format, kind, bad_records, chat_template,
                                     hub_split or "train")
    records.extend(recs)
    for k in reader.COUNTS:
      total[k] += summary[k]
    total["reasons"] = (total["reasons"] + summary["reasons"])[:MAX_REASONS]
  return _to_columns(records), total


@functools.lru_cache(maxsize=16)
def _load_split(paths: tuple[str, ...], stamps: tuple[Any, ...], format: str,  # pylint: disable=redefined-builtin
                kind: str, bad_records: str, chat_template: formats.TemplateKey,
                hub_split: str | None, part: str | None, fraction: float | None,
                dedup: bool) -> tuple[Mapping[str, tuple[str, ...]], Mapping[str, Any],
                                      Mapping[str, Any]]:
  """(columns, this split's summary, the files' summary) of `paths`.

  `part`: None (all records), "train" or "validation" (the records whose `prompt_fraction` is
  at or above / below `fraction`). `dedup`: keep each prompt's first record only.
  """
  columns, files = _load_columns(paths, stamps, format, kind, bad_records, chat_template,
                                 hub_split)
  if part is None and not dedup:
    return columns, dict(files, reasons=list(files["reasons"])), files
  records = _to_records(columns)
  if part is not None:
    in_val = part == "validation"
    records = [r for r in records if (prompt_fraction(r["inputs"]) < fraction) == in_val]
  parsed = len(records)
  if dedup:
    records = reader.dedup_prompts(records)
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


@dataclasses.dataclass
class _SplitColumns:
  """The `columns_fn` of a file-backed task's data source: a split's columns, read from its
  files (cached while they are unchanged), its counts recorded in `bad_record_stats` and the
  files' bad-record budget checked."""
  name: str
  expand: Callable[[str], tuple[str, ...]]  # split -> its files
  format: str
  kind: str
  bad_records: str
  max_bad_fraction: float
  validation_fraction: float | None
  carved: Mapping[str, str]  # split -> its part of the train files ("train" or "validation")
  chat_template: formats.TemplateKey = formats.DEFAULT_CHAT_TEMPLATE

  def __call__(self, split: str) -> Mapping[str, Sequence[str]]:
    paths = self.expand(split)
    hub_split = ("train" if split in self.carved else split) if self.format == "hf_hub" else None
    columns, summary, files = _load_split(
        paths, tuple(_stamp(p, self.format) for p in paths), self.format,
        formats.read_kind(self.kind), self.bad_records, self.chat_template, hub_split,
        self.carved.get(split), self.validation_fraction if split in self.carved else None,
        self.kind == "prompts")
    new = _record_bad_stats(self.name, split, summary)
    where = f"Task {self.name!r} split {split!r}"
    reader.check_budget(where, files, self.max_bad_fraction)  # The files' budget, carved or not.
    if not summary["kept"]:
      raise DataError(
          f"{where}: no records: validation_fraction={self.validation_fraction:g} put none of "
          f"the {files['kept']} usable records of {list(paths)} in this split; change "
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


# ----------------------------------------------------------------------------- registration


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
    chat_template: str | Mapping[str, str] = formats.DEFAULT_CHAT_TEMPLATE,
    tfds_name: str | None = None,
    tfds_field_map: Mapping[str, str] | None = None,
    tfds_splits: Mapping[str, str] | None = None,
    tfds_data_dir: str | None = None,
) -> seqio.Task:
  """Registers (or replaces) seqio task `name` over preference / SFT files.

  Args:
    name: task name.
    path: file path or glob, a list of them, or {split: path(s)}; a bare path is the "train"
      split. Local or any tf.io.gfile filesystem (gs://...). Format "hf_disk": directories
      written by `save_to_disk`; "hf_hub": hub dataset names. Unused for format "tfds".
    format: one of FORMATS.
    kind: "pairs" (inputs, chosen, rejected; the default), "rm_pairwise" (reward-ranking
      text-to-text with seeded A/B flips), "sft" (inputs -> targets; default for "tldr_sft";
      for comparison/HH formats the chosen response is the target) or "prompts" (inputs only,
      each prompt once, first occurrence order; repeats are counted in
      `bad_record_stats(name)["duplicates"]`; file formats only).
    spm_path: the vocabulary (`vocab.get_vocabulary`): a SentencePiece model (e.g. the T5
      vocab), a HF tokenizer.json or a directory holding one; None = bytes.
    truncate: "count" or "error" (over-long examples are never trimmed silently). For kind
      "rm_pairwise", "count" cuts an over-long input's context, never its responses, and drops
      (and counts) an example whose responses alone do not fit: see
      `preprocessors.append_eos_and_check_length` and `truncation_stats(name)["dropped"]`.
    flip_seed: seed of the A/B flips for kind "rm_pairwise".
    rm_response_label: "RESPONSE" ([RESPONSE A], dialogue) or "SUMMARY" ([SUMMARY A], the
      paper's TL;DR tags) for kind "rm_pairwise".
    keep_context: for kind "rm_pairwise", which end of an over-long context survives the cut:
      "start" (TL;DR posts) or "end" (dialogues such as HH, where the last turn matters).
    bad_records: "error" (the first bad record raises ValueError("<file>:<line>: <reason>"))
      or "skip" (skip and count them; see `bad_record_stats(name)`). Not for format "tfds".
    max_bad_fraction: with bad_records="skip", loading a split fails when more than this
      fraction of its records are bad (the message gives the count, the fraction and the
      first reasons).
    validation_fraction: a number in (0, 1), or None. Carves the "validation" split out of
      "train" (a bare path, or a mapping with "train" and no or a None "validation"): a record
      is in validation iff `prompt_fraction(prompt) < validation_fraction` (see the module
      doc). A carved split with no records raises ValueError. File formats only.
    made_by_run: the files are written by an earlier stage of the same run (the collection
      stage's on-policy pairs): they are looked up when a split is first read, not here, so
      every process of the run can register the task before they exist. False: a missing
      file is a ValueError at registration.
    chat_template: how the generic formats turn message lists into text: "hh" (Anthropic HH's
      "\n\nHuman: …\n\nAssistant: …"; the default), "chatml", or a dict of format strings
      {"system", "user", "assistant"} (with {content}) and "generation" (the text that ends a
      prompt), or "tokenizer": the Jinja chat template of the HF tokenizer `spm_path` (a
      ValueError when spm_path is not a HF tokenizer with one). See `preference_formats`.
    tfds_name: TFDS builder "name[:version]" for format "tfds" (read by seqio.TfdsDataSource).
    tfds_field_map: {our field: TFDS feature path ('/' for nesting)}, our fields being
      prompt, chosen, rejected (pairs) or prompt, response (sft).
    tfds_splits: {our split: TFDS split}, default {"train": "train", "validation": "validation"}.
    tfds_data_dir: TFDS data directory.

  Returns:
    The registered seqio.Task.
  """
  kind = kind or formats.default_kind(format)
  formats.check_format_kind(format, kind)
  reader.check_bad_policy(bad_records, max_bad_fraction)
  template = formats.chat_template_key(chat_template, spm_path=spm_path)
  _check_validation_fraction(name, validation_fraction, format, path)
  if format == "hf_hub":
    reader.hub_datasets()  # Fails here, naming the package, when it is not installed.
  vocabulary = vocab_lib.get_vocabulary(spm_path)
  task_options = dict(truncate=truncate, flip_seed=flip_seed,
                      rm_response_label=rm_response_label, keep_context=keep_context)
  if format == "tfds":
    return _register_tfds(name, kind, vocabulary, task_options, bad_records, tfds_name,
                          tfds_field_map, tfds_splits, tfds_data_dir)
  return _register_files(name, path, format, kind, vocabulary, task_options,
                         bad_records=bad_records, max_bad_fraction=max_bad_fraction,
                         validation_fraction=validation_fraction, made_by_run=made_by_run,
                         chat_template=template)


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


def _split_paths(path: str | Sequence[str] | Mapping[str, Any], validation_fraction: float | None
                 ) -> tuple[dict[str, Any], dict[str, str]]:
  """({split: its path(s)}, {carved split: its part of the train files}); a split whose path
  is None is left out, and "validation" is carved out of "train" when a fraction is given and
  no validation file is."""
  split_paths = dict(path) if isinstance(path, Mapping) else {"train": path}
  split_paths = {split: p for split, p in split_paths.items() if p is not None}
  carved = {}
  if validation_fraction is not None and "validation" not in split_paths:
    split_paths["validation"] = split_paths["train"]
    carved = {"train": "train", "validation": "validation"}
  return split_paths, carved


def _register_files(name: str, path: Any, format: str, kind: str,  # pylint: disable=redefined-builtin
                    vocabulary: seqio.Vocabulary, task_options: Mapping[str, Any], *,
                    bad_records: str, max_bad_fraction: float,
                    validation_fraction: float | None, made_by_run: bool,
                    chat_template: formats.TemplateKey) -> seqio.Task:
  if path is None or (not isinstance(path, (str, Mapping)) and not list(path)):
    raise ValueError(f"register_preference_file_task({name!r}): path is required for format "
                     f"{format!r}")
  split_paths, carved = _split_paths(path, validation_fraction)
  if made_by_run:
    expand = lambda split: _expand(split_paths[split], format)
  else:
    expanded = {split: _expand(p, format) for split, p in split_paths.items()}
    expand = expanded.__getitem__
  reset_bad_record_stats(name)  # A re-registered task counts its own files only.
  columns_fn = _SplitColumns(name, expand, format, kind, bad_records, max_bad_fraction,
                             validation_fraction, carved, chat_template)
  source = sources.InMemoryDataSource(columns_fn, splits=list(split_paths))
  if not made_by_run:  # files the run writes are not checked up front
    with _BAD_STATS_LOCK:
      _VALIDATORS[name] = (source, lambda: [columns_fn(split) for split in split_paths])
  return sources.add_task(name, source, kind, vocabulary, **task_options)


def _register_tfds(name: str, kind: str, vocabulary: seqio.Vocabulary,
                   task_options: Mapping[str, Any], bad_records: str, tfds_name: str | None,
                   field_map: Mapping[str, str] | None, splits: Mapping[str, str] | None,
                   data_dir: str | None) -> seqio.Task:
  if bad_records != "error":
    raise ValueError(f"register_preference_file_task({name!r}): bad_records={bad_records!r} "
                     "applies to the file formats, not to format 'tfds'")
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
  return sources.add_task(name, source, kind, vocabulary, pre_tokenize=[rekey], **task_options)


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
