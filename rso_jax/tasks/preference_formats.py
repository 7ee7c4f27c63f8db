"""The preference file formats: one parsed record (a JSON object, a Parquet / Arrow row) -> one
example.

  "tldr_comparisons"  OpenAI summarize-from-feedback comparisons: info.{subreddit,title,post},
                      summaries[0..1].text, choice (0/1). Prompt = TLDR_PROMPT; chosen =
                      summaries[choice]. Records with info.article and no info.post (the CNN/DM
                      batches) are not TL;DR posts: they parse to None (counted as "filtered").
  "tldr_sft"          OpenAI TL;DR SFT data: subreddit, title, post, summary (kind "sft" or
                      "prompts").
  "hh"                Anthropic HH-RLHF: chosen, rejected transcripts; prompt = common prefix up
                      to and including the last "\n\nAssistant:"; responses = the remainders.
  "jsonl", "parquet", "hf_disk", "hf_hub"
                      records of the shapes below, detected per record (the reader gets them
                      from a JSONL / Parquet file, a `save_to_disk` directory or the hub).
  "tfds"              a TFDS builder by name, features renamed through `tfds_field_map` (read
                      by seqio, not parsed here).

Record shapes of the generic formats (TRL's dataset types; a message is {"role": "system" |
"user" | "assistant", "content": str}):
  prompt, chosen, rejected     strings, as given; or message lists (conversational).
  chosen, rejected             the implicit prompt. Strings: TRL's `extract_prompt` (the common
                               prefix up to the first differing character, less a space just
                               before it); message lists: the common leading messages. Also when
                               "prompt" is a string and chosen a message list (TRL's rule).
  prompt, response             SFT (strings).
  prompt, completion           SFT, strings or message lists (kind "pairs": a bad record).
  messages                     SFT: the prompt = the messages before the last assistant message,
                               the response = that message (kind "pairs": a bad record).
Kind "sft" over a pairs record reads prompt -> chosen. Message lists become text through a chat
template (`chat_template`: "hh", "chatml" or a dict of format strings): the prompt is its
messages rendered, then the generation prompt; a response is its first message's content (an
assistant message), then, for several messages, the rest of that message's template and the
following messages rendered. With "hh" a conversation reads exactly as the "hh" format reads its
transcript. With "tokenizer" the task's HF tokenizer renders them with its own Jinja chat
template (`TokenizerChatTemplate`): the prompt is its messages rendered with
`add_generation_prompt=True`; a response is its first message's content, then, for several
messages, what the template renders after that content (the prompt's messages before it).

An example has "inputs" and "chosen"/"rejected" (kind "pairs"), "targets" (kind "sft") or
nothing else (kind "prompts": only the fields the prompt is made of are read). A record that
cannot be trained on raises `Malformed`; the reader adds the file and line.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

from rso_jax.tasks import sources
from rso_jax.tasks import vocab as vocab_lib

FORMATS = ("tldr_comparisons", "tldr_sft", "hh", "jsonl", "parquet", "hf_disk", "hf_hub", "tfds")
GENERIC_FORMATS = ("jsonl", "parquet", "hf_disk", "hf_hub")  # The shapes below, any template.
TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
HH_ASSISTANT = "\n\nAssistant:"
_DEFAULT_KIND = {"tldr_sft": "sft"}

Record = dict[str, str]
# parse(record, read kind) -> its example, or None for a record of another kind.
Parser = Callable[[Mapping[str, Any], str], Record | None]


class Malformed(Exception):
  """A record-level problem; the reader adds the file and line."""


# ----------------------------------------------------------------------------- chat templates

ROLES = ("system", "user", "assistant")
TEMPLATE_KEYS = ROLES + ("generation",)
Message = tuple[str, str]  # (role, content)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """Messages -> text: a format string per role (with {content}, optionally {role}), the
  generation prompt that ends a prompt, and whether a response loses its leading whitespace."""
  system: str
  user: str
  assistant: str
  generation: str
  strip_response: bool = False

  def message(self, role: str, content: str) -> str:
    return getattr(self, role).format(role=role, content=content)

  def prompt(self, messages: Sequence[Message]) -> str:
    return "".join(self.message(r, c) for r, c in messages) + self.generation

  def response(self, messages: Sequence[Message], context: Sequence[Message] = ()) -> str:
    """The first message's content, then (for several) the rest of its template and the
    following messages rendered (`context`, the prompt's messages, is not read)."""
    del context
    (role, content), rest = messages[0], messages[1:]
    text = content.lstrip() if self.strip_response else content
    if rest:
      mark = "\x00content\x00"
      text += self.message(role, mark).split(mark, 1)[1]
      text += "".join(self.message(r, c) for r, c in rest)
    return text


CHAT_TEMPLATES: Mapping[str, ChatTemplate] = {
    # Anthropic HH's transcript text: a conversation reads as the "hh" format reads it.
    "hh": ChatTemplate(system="{content}", user="\n\nHuman: {content}",
                       assistant="\n\nAssistant: {content}", generation=HH_ASSISTANT,
                       strip_response=True),
    "chatml": ChatTemplate(system="<|im_start|>{role}\n{content}<|im_end|>\n",
                           user="<|im_start|>{role}\n{content}<|im_end|>\n",
                           assistant="<|im_start|>{role}\n{content}<|im_end|>\n",
                           generation="<|im_start|>assistant\n"),
}
DEFAULT_CHAT_TEMPLATE = "hh"
TOKENIZER_TEMPLATE = "tokenizer"  # the task's HF tokenizer's own Jinja chat template
TEMPLATE_NAMES = tuple(CHAT_TEMPLATES) + (TOKENIZER_TEMPLATE,)


@dataclasses.dataclass(frozen=True)
class TokenizerChatTemplate:
  """Messages -> text with a HF tokenizer's Jinja chat template (`vocabulary.apply_chat_template`;
  hashable through the vocabulary: a cache key). A template's own error (its
  `raise_exception`, e.g. roles that do not alternate) is a bad record."""
  vocabulary: vocab_lib.HFTokenizerVocabulary

  def _render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    try:
      return self.vocabulary.apply_chat_template(
          [{"role": r, "content": c} for r, c in messages],
          add_generation_prompt=add_generation_prompt)
    except vocab_lib.ChatTemplateError as e:
      raise Malformed(f"chat_template={TOKENIZER_TEMPLATE!r}: {e}") from None

  def prompt(self, messages: Sequence[Message]) -> str:
    return self._render(messages, add_generation_prompt=True)

  def response(self, messages: Sequence[Message], context: Sequence[Message] = ()) -> str:
    """The first message's content, then (for several) what the template renders after it
    (`context`, the prompt's messages, rendered before it)."""
    (role, content), rest = messages[0], messages[1:]
    if not rest:
      return content
    mark = "\x00content\x00"
    text = self._render([*context, (role, mark), *rest], add_generation_prompt=False)
    if text.count(mark) != 1:
      raise Malformed(f"chat_template={TOKENIZER_TEMPLATE!r}: the tokenizer's chat template "
                      "does not render a response's first message once (a response of several "
                      "messages needs it)")
    return content + text.split(mark, 1)[1]


TemplateKey = str | tuple[tuple[str, str], ...] | TokenizerChatTemplate  # hashable (a cache key)


def tokenizer_chat_template(spm_path: str | None) -> TokenizerChatTemplate:
  """chat_template="tokenizer" for a task whose vocabulary is `spm_path`. ValueError naming
  chat_template and spm_path when that is not a HF tokenizer with a chat template."""
  vocabulary = vocab_lib.get_vocabulary(spm_path)
  if not isinstance(vocabulary, vocab_lib.HFTokenizerVocabulary):
    raise ValueError(
        f"chat_template={TOKENIZER_TEMPLATE!r} renders messages with the task's HF tokenizer, "
        f"but spm_path={spm_path!r} is not a HF tokenizer ({type(vocabulary).__name__}): give "
        f"spm_path a {vocab_lib.HF_TOKENIZER_FILE} (or its directory), or another chat_template "
        f"{tuple(CHAT_TEMPLATES)}")
  if vocabulary.chat_template is None:
    where = vocabulary.tokenizer_config_file or f"no {vocab_lib.HF_TOKENIZER_CONFIG_FILE}"
    raise ValueError(
        f"chat_template={TOKENIZER_TEMPLATE!r}: the HF tokenizer spm_path={spm_path!r} has no "
        f"chat template ({where}: no 'chat_template'); choose another chat_template "
        f"{tuple(CHAT_TEMPLATES)} or a dict")
  return TokenizerChatTemplate(vocabulary)


def chat_template_key(value: Any, spm_path: str | None = None) -> TemplateKey:
  """A chat template's hashable form: its name, a dict's sorted items, or for "tokenizer" the
  `TokenizerChatTemplate` of the task's vocabulary `spm_path`. ValueError naming the value for
  an unknown name or a dict without exactly the keys TEMPLATE_KEYS (format strings)."""
  if isinstance(value, TokenizerChatTemplate):
    return value
  if value == TOKENIZER_TEMPLATE:
    return tokenizer_chat_template(spm_path)
  if isinstance(value, str):
    if value not in CHAT_TEMPLATES:
      raise ValueError(f"Unknown chat_template {value!r}; expected one of {TEMPLATE_NAMES} "
                       f"or a dict with keys {TEMPLATE_KEYS}")
    return value
  items = value.items() if isinstance(value, Mapping) else value
  try:
    template = dict(items)
  except (TypeError, ValueError):
    raise ValueError(f"chat_template must be a name {TEMPLATE_NAMES} or a dict with keys "
                     f"{TEMPLATE_KEYS}, got {value!r}") from None
  missing = [k for k in TEMPLATE_KEYS if k not in template]
  extra = sorted(str(k) for k in template if k not in TEMPLATE_KEYS)
  if missing or extra:
    raise ValueError(f"chat_template {value!r}: " + (f"missing keys {missing}" if missing else
                     f"unknown keys {extra}") + f"; a dict template has exactly {TEMPLATE_KEYS}")
  for k in TEMPLATE_KEYS:
    v = template[k]
    if not isinstance(v, str):
      raise ValueError(f"chat_template {value!r}: {k!r} must be a string, got {v!r}")
    if k in ROLES:
      try:
        ok = "\x00" in v.format(role=k, content="\x00")
      except (AttributeError, KeyError, IndexError, ValueError):
        ok = False
      if not ok:
        raise ValueError(f"chat_template {value!r}: {k!r} must be a format string with "
                         f"{{content}} (and optionally {{role}}), got {v!r}")
  return tuple(sorted(template.items()))


def chat_template(value: Any) -> ChatTemplate | TokenizerChatTemplate:
  """The template a name, a dict or a `chat_template_key` names."""
  key = chat_template_key(value)
  if isinstance(key, TokenizerChatTemplate):
    return key
  return CHAT_TEMPLATES[key] if isinstance(key, str) else ChatTemplate(**dict(key))


Template = ChatTemplate | TokenizerChatTemplate


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


def _parse_generic(obj: Mapping[str, Any], kind: str,
                   template: Template = CHAT_TEMPLATES[DEFAULT_CHAT_TEMPLATE]) -> Record:
  """One record of any shape in the module doc (detected from its fields)."""
  def has(key: str) -> bool:  # A null field (an Arrow row's missing value) counts as absent.
    return obj.get(key) is not None
  if has("messages") and not any(map(has, ("chosen", "rejected", "completion", "response"))):
    return _parse_messages(obj, kind, template)
  if has("completion") and not any(map(has, ("chosen", "rejected", "response"))):
    return _parse_prompt_completion(obj, kind, template)
  if has("chosen") and has("rejected") and (
      not has("prompt") or (isinstance(obj["prompt"], str) and isinstance(obj["chosen"], list))):
    return _parse_implicit_prompt(obj, kind, template)
  if isinstance(obj.get("prompt"), list):
    return _parse_conversation(obj, kind, template)
  if kind == "prompts":
    return {"inputs": field(obj, "prompt")}
  if kind == "sft":  # prompt -> response; a TRL pairs file: prompt -> chosen
    prompt = field(obj, "prompt")
    if "response" not in obj and "chosen" not in obj:
      raise Malformed("missing field 'chosen'" if "rejected" in obj else
                      "missing field 'response' (an SFT record) or 'chosen' (a pairs record) "
                      "or 'completion' (a prompt-completion record)")
    if "response" in obj:
      return {"inputs": prompt, "targets": field(obj, "response")}
    chosen = field(obj, "chosen")
    if not chosen.strip():
      raise Malformed("the chosen response is empty")
    return {"inputs": prompt, "targets": chosen}
  return {"inputs": field(obj, "prompt"), "chosen": field(obj, "chosen"),
          "rejected": field(obj, "rejected")}


def messages(obj: Mapping[str, Any], key: str) -> tuple[Message, ...]:
  """obj[key] as (role, content) pairs: a non-empty list of {"role", "content"} objects with
  string values and a role of ROLES (other keys are ignored)."""
  if key not in obj:
    raise Malformed(f"missing field {key!r}")
  v = obj[key]
  if not isinstance(v, list):
    raise Malformed(f"field {key!r} must be a list of messages, got {type(v).__name__}: "
                    f"{v!r:.80}")
  if not v:
    raise Malformed(f"field {key!r} is an empty list of messages")
  out = []
  for i, m in enumerate(v):
    if not isinstance(m, dict):
      raise Malformed(f"field '{key}.{i}' must be a message object with string 'role' and "
                      f"'content', got {type(m).__name__}: {m!r:.80}")
    role, content = field(obj, f"{key}.{i}.role"), field(obj, f"{key}.{i}.content")
    if role not in ROLES:
      raise Malformed(f"field '{key}.{i}.role' is {role!r}; expected one of {ROLES}")
    out.append((role, content))
  return tuple(out)


def _response(msgs: Sequence[Message], key: str, start: int, template: Template,
              context: Sequence[Message]) -> str:
  """A response's text from its messages (`key`'s messages from index `start`) after the
  prompt's messages `context`."""
  if msgs[0][0] != "assistant":
    raise Malformed(f"field '{key}.{start}.role' is {msgs[0][0]!r}: a response starts with an "
                    "'assistant' message")
  return template.response(msgs, context)


def _text_or_messages(obj: Mapping[str, Any], keys: Sequence[str]) -> bool:
  """Whether `keys` hold message lists (any of them is a list) rather than strings."""
  return any(isinstance(obj.get(k), list) for k in keys)


def _parse_conversation(obj: Mapping[str, Any], kind: str, template: Template) -> Record:
  """prompt, chosen, rejected as message lists (kind "sft": prompt, chosen)."""
  prompt_msgs = messages(obj, "prompt")
  prompt = template.prompt(prompt_msgs)
  if kind == "prompts":
    return {"inputs": prompt}
  if "chosen" not in obj and kind == "sft":
    raise Malformed("missing field 'chosen' (a pairs record) or 'completion' (a "
                    "prompt-completion record)")
  rec = {"inputs": prompt}
  for key in ("chosen",) if kind == "sft" else ("chosen", "rejected"):
    rec["targets" if kind == "sft" else key] = _response(messages(obj, key), key, 0, template,
                                                         prompt_msgs)
  return rec


def extract_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
  """(prompt, chosen, rejected) from two texts that share an implicit prompt, by TRL's rule: the
  prompt runs up to the first differing character, less one space just before it (the space
  stays with the responses). Malformed when there is no shared prefix, or no differing
  character (one text is a prefix of the other)."""
  n = min(len(chosen), len(rejected))
  idx = next((i for i in range(n) if chosen[i] != rejected[i]), None)
  if idx is None:
    raise Malformed("chosen and rejected do not differ before one of them ends: no implicit "
                    "prompt (give a 'prompt' field)")
  if idx > 0 and chosen[idx - 1] == " ":
    idx -= 1
  if idx == 0:
    raise Malformed("chosen and rejected share no prefix: no implicit prompt (give a 'prompt' "
                    "field)")
  return chosen[:idx], chosen[idx:], rejected[idx:]


def _parse_implicit_prompt(obj: Mapping[str, Any], kind: str, template: Template) -> Record:
  """chosen, rejected with the prompt inside them (strings or message lists)."""
  if not _text_or_messages(obj, ("chosen", "rejected")):
    prompt, chosen, rejected = extract_prompt(field(obj, "chosen"), field(obj, "rejected"))
  else:
    c, r = messages(obj, "chosen"), messages(obj, "rejected")
    n = 0
    while n < min(len(c), len(r)) and c[n] == r[n]:
      n += 1
    if not n:
      raise Malformed("chosen and rejected share no leading messages: no implicit prompt (give "
                      "a 'prompt' field)")
    prompt = template.prompt(c[:n])
    if kind == "prompts":
      return {"inputs": prompt}
    texts = {}
    for key, msgs in (("chosen", c[n:]), ("rejected", r[n:])):
      if not msgs:
        raise Malformed(f"field {key!r} has no message after the {n} it shares with the other "
                        "response (the implicit prompt)")
      texts[key] = _response(msgs, key, n, template, c[:n])
    chosen, rejected = texts["chosen"], texts["rejected"]
  if kind == "prompts":
    return {"inputs": prompt}
  if kind == "sft":
    return {"inputs": prompt, "targets": chosen}
  return {"inputs": prompt, "chosen": chosen, "rejected": rejected}


def _parse_prompt_completion(obj: Mapping[str, Any], kind: str, template: Template
                             ) -> Record:
  """prompt, completion: SFT, strings or message lists."""
  if kind == "pairs":
    raise Malformed("a prompt-completion record has no rejected response (preference pairs "
                    "need 'chosen' and 'rejected'; such a file is SFT data)")
  keys = ("prompt",) if kind == "prompts" else ("prompt", "completion")
  if not _text_or_messages(obj, keys):
    prompt = field(obj, "prompt")
    return {"inputs": prompt} if kind == "prompts" else {
        "inputs": prompt, "targets": field(obj, "completion")}
  prompt_msgs = messages(obj, "prompt")
  prompt = template.prompt(prompt_msgs)
  if kind == "prompts":
    return {"inputs": prompt}
  return {"inputs": prompt, "targets": _response(messages(obj, "completion"), "completion", 0,
                                                 template, prompt_msgs)}


def _parse_messages(obj: Mapping[str, Any], kind: str, template: Template) -> Record:
  """messages (conversational language modeling): prompt = the messages before the last
  assistant message, response = that message."""
  if kind == "pairs":
    raise Malformed("a 'messages' record has one response, no rejected one (preference pairs "
                    "need 'chosen' and 'rejected'; such a file is SFT data)")
  msgs = messages(obj, "messages")
  last = max((i for i, (role, _) in enumerate(msgs) if role == "assistant"), default=None)
  if last is None:
    raise Malformed("field 'messages' has no 'assistant' message (the response)")
  if not last:
    raise Malformed("field 'messages' has no message before its last 'assistant' message (the "
                    "prompt)")
  prompt = template.prompt(msgs[:last])
  if kind == "prompts":
    return {"inputs": prompt}
  return {"inputs": prompt, "targets": template.response(msgs[last:last + 1], msgs[:last])}


PARSERS: Mapping[str, Parser] = {
    "tldr_comparisons": _parse_tldr_comparison, "tldr_sft": _parse_tldr_sft, "hh": _parse_hh,
    **{f: _parse_generic for f in GENERIC_FORMATS}}


def parser(format: str, template: Any = DEFAULT_CHAT_TEMPLATE) -> Parser:  # pylint: disable=redefined-builtin
  """The parser of `format`; the generic formats render message lists with chat `template`
  (a name, a dict or a `chat_template_key`; "tokenizer" only as its key)."""
  if format in GENERIC_FORMATS:
    return functools.partial(_parse_generic, template=chat_template(template))
  return PARSERS[format]

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
