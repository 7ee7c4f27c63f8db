"""The preference file formats: one parsed record (a JSON object or a Parquet row) -> one example.

  "tldr_comparisons"  OpenAI summarize-from-feedback comparisons: info.{subreddit,title,post},
                      summaries[0..1].text, choice (0/1). Prompt = TLDR_PROMPT; chosen =
                      summaries[choice]. Records with info.article and no info.post (the CNN/DM
                      batches) are not TL;DR posts: they parse to None (counted as "filtered").
  "tldr_sft"          OpenAI TL;DR SFT data: subreddit, title, post, summary (kind "sft" or
                      "prompts").
  "hh"                Anthropic HH-RLHF: chosen, rejected transcripts; prompt = common prefix up
                      to and including the last "\n\nAssistant:"; responses = the remainders.
  "jsonl", "parquet"  columns prompt, chosen, rejected (kind "pairs"/"rm_pairwise") or
                      prompt, response (kind "sft"); kind "prompts" needs the prompt only.
  "tfds"              a TFDS builder by name, features renamed through `tfds_field_map` (read
                      by seqio, not parsed here).

An example has "inputs" and "chosen"/"rejected" (kind "pairs"), "targets" (kind "sft") or
nothing else (kind "prompts": only the fields the prompt is made of are read). A record that
cannot be trained on raises `Malformed`; the reader adds the file and line.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from rso_jax.tasks import sources

FORMATS = ("tldr_comparisons", "tldr_sft", "hh", "jsonl", "parquet", "tfds")
TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
HH_ASSISTANT = "\n\nAssistant:"
_DEFAULT_KIND = {"tldr_sft": "sft"}

Record = dict[str, str]
# parse(record, read kind) -> its example, or None for a record of another kind.
Parser = Callable[[Mapping[str, Any], str], Record | None]


class Malformed(Exception):
  """A record-level problem; the reader adds the file and line."""


def field(obj: Any, dotted: str, *, allow_empty: bool = True) -> str:
  """obj[a][b]... for "a.b"; must be a string."""
  v = obj
  for part in dotted.split("."):
    if isinstance(v, list) and part.isdigit():
      idx = int(part)
      if idx >= len(v):
        raise Malformed(f"field {dotted!r}: list has {len(v)} items, no index {idx}")
      v = v[idx]
    elif isinstance(v, dict) and part in v:
      v = v[part]
    else:
      raise Malformed(f"missing field {dotted!r}")
  if not isinstance(v, str):
    raise Malformed(f"field {dotted!r} must be a string, got {type(v).__name__}: {v!r:.80}")
  if not allow_empty and not v.strip():
    raise Malformed(f"field {dotted!r} is empty")
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
    raise Malformed("chosen and rejected share no prefix ending in '\\n\\nAssistant:'")
  end = cut + len(HH_ASSISTANT)
  return chosen[:end], chosen[end:].lstrip(), rejected[end:].lstrip()


def _parse_tldr_comparison(obj: Mapping[str, Any], kind: str) -> Record | None:
  info = obj.get("info")
  if not isinstance(info, dict):
    raise Malformed("missing object field 'info'")
  if "post" not in info and "article" in info:
    return None  # CNN/DM comparison: not a TL;DR post.
  prompt = tldr_prompt(field(obj, "info.subreddit"), field(obj, "info.title"),
                       field(obj, "info.post"))
  if kind == "prompts":
    return {"inputs": prompt}
  texts = [field(obj, f"summaries.{i}.text").strip() for i in (0, 1)]
  choice = obj.get("choice")
  if isinstance(choice, bool) or choice not in (0, 1):
    raise Malformed(f"field 'choice' must be 0 or 1, got {choice!r}")
  if kind == "sft":
    return {"inputs": prompt, "targets": texts[choice]}
  return {"inputs": prompt, "chosen": texts[choice], "rejected": texts[1 - choice]}


def _parse_tldr_sft(obj: Mapping[str, Any], kind: str) -> Record:
  prompt = tldr_prompt(field(obj, "subreddit"), field(obj, "title"), field(obj, "post"))
  if kind == "prompts":
    return {"inputs": prompt}
  return {"inputs": prompt, "targets": field(obj, "summary", allow_empty=False).strip()}


def _parse_hh(obj: Mapping[str, Any], kind: str) -> Record:
  prompt, chosen, rejected = split_hh(field(obj, "chosen"), field(obj, "rejected"))
  if kind == "prompts":
    return {"inputs": prompt}
  if kind == "sft":
    return {"inputs": prompt, "targets": chosen}
  return {"inputs": prompt, "chosen": chosen, "rejected": rejected}


def _parse_generic(obj: Mapping[str, Any], kind: str) -> Record:
  if kind == "prompts":
    return {"inputs": field(obj, "prompt")}
  if kind == "sft":  # prompt -> response; a TRL pairs file: prompt -> chosen
    prompt = field(obj, "prompt")
    if "response" not in obj and "chosen" not in obj:
      raise Malformed("missing field 'chosen'" if "rejected" in obj else
                      "missing field 'response' (an SFT record) or 'chosen' (a pairs record)")
    if "response" in obj:
      return {"inputs": prompt, "targets": field(obj, "response")}
    chosen = field(obj, "chosen")
    if not chosen.strip():
      raise Malformed("the chosen response is empty")
    return {"inputs": prompt, "targets": chosen}
  return {"inputs": field(obj, "prompt"), "chosen": field(obj, "chosen"),
          "rejected": field(obj, "rejected")}


PARSERS: Mapping[str, Parser] = {
    "tldr_comparisons": _parse_tldr_comparison, "tldr_sft": _parse_tldr_sft, "hh": _parse_hh,
    "jsonl": _parse_generic, "parquet": _parse_generic}

_FIELD_NAMES = {"inputs": "prompt", "chosen": "chosen response",
                "rejected": "rejected response", "targets": "response"}


def check_example(rec: Record) -> None:
  """Raises Malformed for text that cannot be trained on: not encodable, empty, identical."""
  for key, value in rec.items():
    try:
      value.encode("utf-8")
    except UnicodeEncodeError as e:
      raise Malformed(f"the {_FIELD_NAMES.get(key, key)} is not valid Unicode text "
                      f"({e.reason} at character {e.start})") from None
  for key in ("chosen", "rejected", "targets"):
    if key in rec and not rec[key].strip():
      raise Malformed(f"the {_FIELD_NAMES[key]} is empty")
  if "chosen" in rec and rec["chosen"].strip() == rec["rejected"].strip():
    raise Malformed("chosen and rejected responses are identical (no preference to learn)")


def default_kind(format: str) -> str:  # pylint: disable=redefined-builtin
  """The task kind of a file when none is given: "sft" for "tldr_sft", else "pairs"."""
  return _DEFAULT_KIND.get(format, "pairs")


def read_kind(kind: str) -> str:
  """The example shape a task kind reads: "sft", "prompts", or "pairs" (also for "rm_pairwise")."""
  return kind if kind in ("sft", "prompts") else "pairs"


def check_format_kind(format: str, kind: str) -> None:  # pylint: disable=redefined-builtin
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
