"""TRL's dataset shapes, chat templates and the `datasets` formats ("hf_disk", "hf_hub") of the
file-backed preference tasks."""
import json
import re
import sys

import helpers
import pyarrow as pa
import pytest
import seqio

from rso_jax import cli
import rso_jax.tasks as tasks
from rso_jax.tasks import preference_files as pf
from rso_jax.tasks import preference_formats as formats

LENGTHS = {"inputs": 256, "targets": 128}


def _write(path, records):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return str(path)


def _examples(name, split="train"):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
  return [{k[:-len("_pretokenized")]: v.decode() for k, v in ex.items()
           if k.endswith("_pretokenized")} for ex in ds.as_numpy_iterator()]


def _msg(role, content):
  return {"role": role, "content": content}


def _user(content):
  return _msg("user", content)


def _bot(content):
  return _msg("assistant", content)


# One two-turn conversation in every shape; HH_* is its Anthropic HH transcript text.
TURNS = [_user("Hi"), _bot("Hello!"), _user("Tell me a joke?")]
CHOSEN, REJECTED = "Sure: why did the owl cross the road?", "No."
HH_PROMPT = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke?\n\nAssistant:"
CHATML_PROMPT = ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                 "<|im_start|>user\nTell me a joke?<|im_end|>\n<|im_start|>assistant\n")
EXPLICIT = {"prompt": TURNS, "chosen": [_bot(CHOSEN)], "rejected": [_bot(REJECTED)]}
IMPLICIT = {"chosen": TURNS + [_bot(CHOSEN)], "rejected": TURNS + [_bot(REJECTED)]}
HH = {"chosen": f"{HH_PROMPT} {CHOSEN}", "rejected": f"{HH_PROMPT} {REJECTED}"}


def _read(records, tmp_path, kind="pairs", fmt="jsonl", name="data.jsonl", **kw):
  return pf.read_records(_write(tmp_path / name, records), fmt, kind, **kw)


# ----------------------------------------------------------------------------- string shapes


def test_standard_explicit_prompt_is_read_as_given(tmp_path):
  rec = {"prompt": " The sky is", "chosen": " blue. ", "rejected": " green.\n"}
  assert _read([rec], tmp_path) == [{"inputs": " The sky is", "chosen": " blue. ",
                                     "rejected": " green.\n"}]
  assert _read([rec], tmp_path, "sft") == [{"inputs": " The sky is", "targets": " blue. "}]
  assert _read([rec, rec], tmp_path, "prompts") == [{"inputs": " The sky is"}]
  # A message list in another field does not change a string record's reading.
  assert _read([dict(rec, messages=[_user("x")])], tmp_path)[0]["chosen"] == " blue. "


def _trl_extract_prompt(chosen, rejected):
  """TRL's `extract_prompt` loop, as TRL runs it (for texts that differ after their first
  character)."""
  for idx in range(min(len(chosen), len(rejected))):
    if chosen[idx] != rejected[idx]:
      if chosen[idx - 1] == " ":
        idx -= 1
      break
  return chosen[:idx], chosen[idx:], rejected[idx:]  # pylint: disable=undefined-loop-variable


@pytest.mark.parametrize("chosen,rejected,want", [
    ("The sky is blue.", "The sky is green.", ("The sky is", " blue.", " green.")),
    ("2+2=4", "2+2=5", ("2+2=", "4", "5")),
    ("Q: café? A: oui", "Q: café? A: non", ("Q: café? A:", " oui", " non")),
    ("Q: x  A: yes", "Q: x  A: no", ("Q: x  A:", " yes", " no")),
    ("Say  hi", "Say  bye", ("Say ", " hi", " bye")),  # one space moves, not two
    ("\n\nHuman: Q\n\nAssistant: Absolutely", "\n\nHuman: Q\n\nAssistant: Always",
     ("\n\nHuman: Q\n\nAssistant: A", "bsolutely", "lways")),
])
def test_implicit_prompt_follows_trls_rule(tmp_path, chosen, rejected, want):
  assert formats.extract_prompt(chosen, rejected) == want == _trl_extract_prompt(chosen, rejected)
  prompt, c, r = want
  rec = {"chosen": chosen, "rejected": rejected}
  assert _read([rec], tmp_path) == [{"inputs": prompt, "chosen": c, "rejected": r}]
  assert _read([rec], tmp_path, "sft") == [{"inputs": prompt, "targets": c}]
  assert _read([rec], tmp_path, "prompts") == [{"inputs": prompt}]


def test_implicit_prompt_without_a_shared_prefix_is_a_bad_record(tmp_path):
  cases = [({"chosen": "Yes", "rejected": "No"}, "share no prefix"),
           ({"chosen": " yes", "rejected": " no"}, "share no prefix"),  # only the space
           ({"chosen": "ab", "rejected": "abc"}, "do not differ before one of them ends")]
  for rec, reason in cases:
    with pytest.raises(pf.DataError, match=rf"data\.jsonl:1: chosen and rejected {reason}"):
      _read([rec], tmp_path)


def test_string_prompt_completion_is_sft_data(tmp_path):
  rec = {"prompt": "The sky is", "completion": " blue."}
  assert _read([rec], tmp_path, "sft") == [{"inputs": "The sky is", "targets": " blue."}]
  assert _read([rec], tmp_path, "prompts") == [{"inputs": "The sky is"}]
  for kind in ("pairs", "rm_pairwise"):
    with pytest.raises(pf.DataError, match=r"data\.jsonl:1: a prompt-completion record has no "
                                           r"rejected response"):
      _read([rec], tmp_path, kind)
  with pytest.raises(pf.DataError, match=r"data\.jsonl:1: missing field 'prompt'"):
    _read([{"completion": "x"}], tmp_path, "sft")


# ----------------------------------------------------------------------------- conversations


@pytest.mark.parametrize("shape", ["explicit", "implicit"])
def test_conversational_preference_equals_the_hh_transcript(tmp_path, shape):
  """A conversation under the "hh" template reads as the same conversation's HH transcript."""
  record = EXPLICIT if shape == "explicit" else IMPLICIT
  for kind in ("pairs", "sft", "prompts"):
    got = _read([record], tmp_path, kind)
    assert got == pf.read_records(_write(tmp_path / "hh.jsonl", [HH]), "hh", kind)
  assert got == [{"inputs": HH_PROMPT}]
  assert _read([record], tmp_path) == [{"inputs": HH_PROMPT, "chosen": CHOSEN,
                                        "rejected": REJECTED}]


def test_ultrafeedback_shape_a_string_prompt_beside_conversations_is_implicit(tmp_path):
  rec = dict(IMPLICIT, prompt="Tell me a joke?")  # TRL's rule: the prompt is extracted.
  assert _read([rec], tmp_path) == [{"inputs": HH_PROMPT, "chosen": CHOSEN,
                                     "rejected": REJECTED}]


def test_conversational_prompt_completion_and_messages(tmp_path):
  pc = {"prompt": TURNS, "completion": [_bot(CHOSEN)]}
  lm = {"messages": TURNS + [_bot(CHOSEN), _user("Ha.")], "prompt": "Hi"}  # ultrachat-like
  for rec in (pc, lm):
    assert _read([rec], tmp_path, "sft") == [{"inputs": HH_PROMPT, "targets": CHOSEN}]
    assert _read([rec], tmp_path, "prompts") == [{"inputs": HH_PROMPT}]
  with pytest.raises(pf.DataError, match=r"data\.jsonl:1: a 'messages' record has one "
                                         r"response, no rejected one"):
    _read([lm], tmp_path)
  with pytest.raises(pf.DataError, match=r"data\.jsonl:1: a prompt-completion record has no "
                                         r"rejected response"):
    _read([pc], tmp_path)
  # A system message leads the prompt; an explicit pairs record's SFT target is its chosen.
  sys_rec = dict(EXPLICIT, prompt=[_msg("system", "Be brief.")] + TURNS)
  assert _read([sys_rec], tmp_path, "sft") == [{"inputs": "Be brief." + HH_PROMPT,
                                                "targets": CHOSEN}]


def test_a_response_of_several_messages(tmp_path):
  rec = {"prompt": [_user("Hi")],
         "chosen": [_bot(" Hello!"), _user("Joke?"), _bot("Owl.")], "rejected": [_bot("Go.")]}
  assert _read([rec], tmp_path)[0]["chosen"] == "Hello!\n\nHuman: Joke?\n\nAssistant: Owl."
  assert _read([rec], tmp_path, chat_template="chatml")[0]["chosen"] == (
      " Hello!<|im_end|>\n<|im_start|>user\nJoke?<|im_end|>\n<|im_start|>assistant\nOwl."
      "<|im_end|>\n")
  # Implicit: the responses start after the shared messages.
  imp = {"chosen": [_user("Hi"), _bot("A"), _user("More")],
         "rejected": [_user("Hi"), _bot("B")]}
  assert _read([imp], tmp_path) == [{"inputs": "\n\nHuman: Hi\n\nAssistant:",
                                     "chosen": "A\n\nHuman: More", "rejected": "B"}]


def test_chatml_and_a_custom_template(tmp_path):
  assert _read([EXPLICIT, IMPLICIT], tmp_path, chat_template="chatml") == [
      {"inputs": CHATML_PROMPT, "chosen": CHOSEN, "rejected": REJECTED}] * 2
  custom = {"system": "[S]{content}\n", "user": "[U]{content}\n", "assistant": "[A]{content}\n",
            "generation": "[A]"}
  assert _read([{"messages": [_msg("system", "s"), _user("u {x}"), _bot(" a")]}], tmp_path,
               "sft", chat_template=custom) == [{"inputs": "[S]s\n[U]u {x}\n[A]", "targets": " a"}]
  # Through a task: a dict template is hashable as the loader's cache key; {role} is filled.
  path = _write(tmp_path / "conv.jsonl", [EXPLICIT])
  tasks.register_preference_file_task("t_fmt_custom", path, "jsonl", chat_template=dict(
      custom, user="<{role}>{content}</{role}>", assistant="<{role}>{content}</{role}>"))
  (ex,) = _examples("t_fmt_custom")
  assert ex["inputs"] == ("<user>Hi</user><assistant>Hello!</assistant><user>Tell me a joke?"
                          "</user>[A]")
  assert (ex["chosen"], ex["rejected"]) == (CHOSEN, REJECTED)
  # The template is part of the parsed files' cache key: the same file, another template.
  for template, want in (("hh", HH_PROMPT), ("chatml", CHATML_PROMPT), ("hh", HH_PROMPT)):
    tasks.register_preference_file_task("t_fmt_template", path, "jsonl", chat_template=template)
    assert [e["inputs"] for e in _examples("t_fmt_template")] == [want]


@pytest.mark.parametrize("template,match", [
    ("llama", r"Unknown chat_template 'llama'"),
    ({"user": "{content}", "assistant": "{content}", "generation": ""},
     r"chat_template \{.*\}: missing keys \['system'\]"),
    ({"system": "{content}", "user": "{content}", "assistant": "{content}", "generation": "",
      "tool": "{content}"}, r"unknown keys \['tool'\]"),
    ({"system": "{content}", "user": "U: {text}", "assistant": "{content}", "generation": ""},
     r"'user' must be a format string with \{content\}"),
    ({"system": "{content}", "user": "U:", "assistant": "{content}", "generation": ""},
     r"'user' must be a format string with \{content\}"),
    ({"system": "{content}", "user": "{content}", "assistant": "{content}", "generation": None},
     r"'generation' must be a string"),
    (["hh"], r"chat_template \['hh'\]"),
])
def test_bad_chat_templates_are_value_errors_naming_the_value(tmp_path, template, match):
  path = _write(tmp_path / "conv.jsonl", [EXPLICIT])
  with pytest.raises(ValueError, match=match):
    tasks.register_preference_file_task("t_fmt_bad_template", path, "jsonl",
                                        chat_template=template)
  with pytest.raises(ValueError, match=match):
    pf.read_records(path, "jsonl", chat_template=template)


# ----------------------------------------------------------------------------- HF chat template


def _jinja(template, messages, add_generation_prompt=True):
  """What transformers renders (its sandboxed environment, trim_blocks, lstrip_blocks)."""
  import jinja2.sandbox
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  return env.from_string(template).render(messages=messages,
                                          add_generation_prompt=add_generation_prompt,
                                          eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
  return helpers.write_hf_tokenizer(tmp_path_factory.mktemp("hf_tok"), helpers.WORDS)


def test_tokenizer_chat_template_renders_what_jinja_renders(tmp_path, hf_tokenizer):
  """chat_template="tokenizer": the prompt is the HF tokenizer's Jinja template rendered with
  the generation prompt; a response is its assistant message's content."""
  read = lambda recs, kind="pairs": _read(recs, tmp_path, kind, chat_template="tokenizer",
                                          spm_path=hf_tokenizer)
  want = _jinja(helpers.HF_CHAT_TEMPLATE, TURNS)
  assert want == CHATML_PROMPT  # the helper's template is ChatML
  assert read([EXPLICIT, IMPLICIT]) == [{"inputs": want, "chosen": CHOSEN,
                                         "rejected": REJECTED}] * 2
  conv = [{"prompt": TURNS, "completion": [_bot(CHOSEN)]}, {"messages": TURNS + [_bot(CHOSEN)]}]
  assert read(conv, "sft") == [{"inputs": want, "targets": CHOSEN}] * 2
  assert read([EXPLICIT], "prompts") == [{"inputs": want}]
  # A response of several messages: its content, then what the template renders after it.
  rec = {"prompt": [_user("Hi")],
         "chosen": [_bot(" Hello!"), _user("Joke?"), _bot("Owl.")], "rejected": [_bot("Go.")]}
  full = _jinja(helpers.HF_CHAT_TEMPLATE, rec["prompt"] + rec["chosen"], False)
  assert read([rec])[0]["chosen"] == " Hello!" + full.split(" Hello!", 1)[1] == _read(
      [rec], tmp_path, chat_template="chatml")[0]["chosen"]
  # Through a task (the file, or its directory, as spm_path); the template is part of the
  # parsed files' cache key, and the text is tokenized by the same HF vocabulary.
  path = _write(tmp_path / "conv.jsonl", [EXPLICIT])
  vocab = tasks.get_vocabulary(hf_tokenizer)
  for template, spm, prompt in (("tokenizer", hf_tokenizer, want), ("hh", hf_tokenizer, HH_PROMPT),
                                ("tokenizer", f"{hf_tokenizer}/tokenizer.json", want)):
    tasks.register_preference_file_task("t_fmt_tok", path, "jsonl", chat_template=template,
                                        spm_path=spm)
    (ex,) = _examples("t_fmt_tok")
    assert (ex["inputs"], ex["chosen"], ex["rejected"]) == (prompt, CHOSEN, REJECTED)
  (ex,) = seqio.get_mixture_or_task("t_fmt_tok").get_dataset(
      LENGTHS, split="train", shuffle=False).as_numpy_iterator()
  assert ex["inputs"].tolist() == vocab.encode(want) + [vocab.eos_id]


def test_a_tokenizer_templates_own_error_is_a_bad_record(tmp_path, hf_tokenizer):
  strict = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
            "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
            "{% endif %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")
  d = helpers.write_hf_tokenizer(tmp_path / "strict", helpers.WORDS, chat_template=strict)
  bad = dict(EXPLICIT, prompt=[_bot("Hi")] + TURNS)
  with pytest.raises(pf.DataError, match=r"data\.jsonl:2: chat_template='tokenizer': chat "
                                         r"template of .*strict/tokenizer_config\.json: "
                                         r"Conversation roles must alternate"):
    _read([EXPLICIT, bad], tmp_path, chat_template="tokenizer", spm_path=d)
  assert _read([EXPLICIT, bad], tmp_path, chat_template="tokenizer", spm_path=d,
               bad_records="skip", max_bad_fraction=0.5) == [{
                   "inputs": _jinja(strict, TURNS), "chosen": CHOSEN, "rejected": REJECTED}]


@pytest.mark.parametrize("which", ["bytes", "sentencepiece", "no_template"])
def test_tokenizer_chat_template_is_refused_without_a_hf_chat_template(tmp_path, which):
  spm_path = {"bytes": None, "sentencepiece": tasks.synthetic_words_model(),
              "no_template": str(tmp_path / "tok")}[which]
  if which == "no_template":
    helpers.write_hf_tokenizer(spm_path, helpers.WORDS, chat_template=False)
    match = (rf"chat_template='tokenizer': the HF tokenizer spm_path='{spm_path}' has no chat "
             r"template \(.*tok/tokenizer_config\.json: no 'chat_template'\)")
  else:
    match = (rf"chat_template='tokenizer' renders messages with the task's HF tokenizer, but "
             rf"spm_path={re.escape(repr(spm_path))} is not a HF tokenizer")
  path = _write(tmp_path / "conv.jsonl", [EXPLICIT])
  with pytest.raises(ValueError, match=match):
    tasks.register_preference_file_task("t_fmt_tok_refused", path, "jsonl",
                                        chat_template="tokenizer", spm_path=spm_path)
  with pytest.raises(ValueError, match=match):
    pf.read_records(path, "jsonl", chat_template="tokenizer", spm_path=spm_path)


# ----------------------------------------------------------------------------- bad records

BAD_RECORDS = [
    (dict(EXPLICIT, prompt=["Hi"]), "pairs",
     r"field 'prompt\.0' must be a message object with string 'role' and 'content', got str"),
    (dict(EXPLICIT, prompt=[{"role": "user"}]), "pairs", r"missing field 'prompt\.0\.content'"),
    (dict(EXPLICIT, prompt=[{"role": 1, "content": "x"}]), "pairs",
     r"field 'prompt\.0\.role' must be a string, got int"),
    (dict(EXPLICIT, chosen=[_msg("tool", "x")]), "pairs",
     r"field 'chosen\.0\.role' is 'tool'; expected one of \('system', 'user', 'assistant'\)"),
    (dict(EXPLICIT, chosen=[_user("x")]), "pairs",
     r"field 'chosen\.0\.role' is 'user': a response starts with an 'assistant' message"),
    (dict(EXPLICIT, rejected=REJECTED), "pairs", r"field 'rejected' must be a list of messages, "
                                                 r"got str"),
    (dict(EXPLICIT, prompt=[]), "pairs", r"field 'prompt' is an empty list of messages"),
    (dict(EXPLICIT, chosen=[_bot(" ")]), "pairs", r"the chosen response is empty"),
    (dict(EXPLICIT, rejected=[_bot(CHOSEN)]), "pairs", r"chosen and rejected responses are "
                                                       r"identical"),
    ({"prompt": TURNS, "rejected": [_bot("x")]}, "sft", r"missing field 'chosen' \(a pairs "
                                                        r"record\) or 'completion'"),
    ({"chosen": [_user("a"), _bot("b")], "rejected": [_user("c"), _bot("b")]}, "pairs",
     r"chosen and rejected share no leading messages"),
    ({"chosen": TURNS, "rejected": TURNS + [_bot("b")]}, "pairs",
     r"field 'chosen' has no message after the 3 it shares"),
    ({"chosen": TURNS + [_user("b")], "rejected": TURNS + [_bot("b")]}, "pairs",
     r"field 'chosen\.3\.role' is 'user': a response starts with an 'assistant' message"),
    ({"prompt": "Hi", "completion": [_bot("x")]}, "sft",
     r"field 'prompt' must be a list of messages, got str"),
    ({"messages": [_user("a"), _user("b")]}, "sft", r"field 'messages' has no 'assistant' "
                                                    r"message"),
    ({"messages": [_bot("a")]}, "sft", r"field 'messages' has no message before its last"),
    ({"messages": "Hi"}, "prompts", r"field 'messages' must be a list of messages, got str"),
]


@pytest.mark.parametrize("record,kind,reason", BAD_RECORDS)
def test_bad_records_name_file_line_and_field(tmp_path, record, kind, reason):
  path = _write(tmp_path / "bad.jsonl", [EXPLICIT, "", record])
  name = "t_fmt_bad"
  tasks.register_preference_file_task(name, path, "jsonl", kind=kind)
  with pytest.raises(ValueError, match=rf"bad\.jsonl:3: {reason}.*bad_records='skip'"):
    _examples(name)
  # Skipped and counted within the budget.
  tasks.register_preference_file_task(name, path, "jsonl", kind=kind, bad_records="skip",
                                      max_bad_fraction=0.5)
  assert len(_examples(name)) == 1
  stats = pf.bad_record_stats(name)
  assert stats["skipped"] == 1 and re.search(rf"bad\.jsonl:3: {reason}", stats["reasons"][0])


# ----------------------------------------------------------------------------- hf_disk, hf_hub

MESSAGES = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))


def _features(schema):
  def feature(t):
    if pa.types.is_list(t):
      return [feature(t.value_type)]
    if pa.types.is_struct(t):
      return {f.name: feature(f.type) for f in t}
    return {"dtype": str(t), "_type": "Value"}
  return {f.name: feature(f.type) for f in schema}


def _save_to_disk(directory, rows, schema=None, shards=1):
  """A directory as `datasets.Dataset.save_to_disk` writes it: Arrow IPC stream shards
  data-NNNNN-of-NNNNN.arrow, dataset_info.json and state.json."""
  table = pa.Table.from_pylist(rows, schema=schema)
  directory.mkdir(parents=True)
  per = -(-len(rows) // shards)
  files = []
  for i in range(shards):
    name = f"data-{i:05d}-of-{shards:05d}.arrow"
    with pa.OSFile(str(directory / name), "wb") as sink:
      with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.slice(i * per, per))
    files.append({"filename": name})
  (directory / "dataset_info.json").write_text(json.dumps(
      {"citation": "", "description": "", "features": _features(table.schema), "homepage": "",
       "license": ""}))
  (directory / "state.json").write_text(json.dumps(
      {"_data_files": files, "_fingerprint": "0123456789abcdef", "_format_columns": None,
       "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
       "_split": None}))
  return str(directory)


def _save_dict_to_disk(directory, splits, schema=None):
  """A `DatasetDict.save_to_disk` directory: dataset_dict.json and one directory per split."""
  for split, rows in splits.items():
    _save_to_disk(directory / split, rows, schema)
  (directory / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
  return str(directory)


def test_hf_disk_dataset_directory(tmp_path):
  rows = [{"prompt": f"q{i} is", "chosen": " yes", "rejected": " no"} for i in range(5)]
  path = _save_to_disk(tmp_path / "ds", rows, shards=2)
  assert pf.read_records(path, "hf_disk") == [{"inputs": r["prompt"], "chosen": " yes",
                                               "rejected": " no"} for r in rows]
  implicit = [{"chosen": "The sky is blue.", "rejected": "The sky is green."}]
  path2 = _save_to_disk(tmp_path / "implicit", implicit)
  tasks.register_preference_file_task("t_fmt_disk", {"train": path, "validation": path2},
                                      "hf_disk")
  assert [e["inputs"] for e in _examples("t_fmt_disk")] == [r["prompt"] for r in rows]
  assert _examples("t_fmt_disk", "validation") == [
      {"inputs": "The sky is", "chosen": " blue.", "rejected": " green."}]
  # A bad row: "<dir>: row N", counted from 0 across the shards.
  bad = rows[:3] + [{"prompt": "q", "chosen": None, "rejected": "r"}]
  path3 = _save_to_disk(tmp_path / "bad", bad, shards=2)
  with pytest.raises(pf.DataError, match=r"bad: row 3: field 'chosen' must be a string, got "
                                         r"NoneType: None \(format 'hf_disk'"):
    pf.read_records(path3, "hf_disk")


def test_hf_disk_dataset_dict_with_conversational_columns(tmp_path):
  schema = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES),
                      ("score_chosen", pa.float64())])
  row = dict(EXPLICIT, score_chosen=8.0)
  other = dict(row, prompt=[_user("Owl?")])
  path = _save_dict_to_disk(tmp_path / "dd", {"train": [row, other], "test": [other]}, schema)
  tasks.register_preference_file_task(
      "t_fmt_dd", {"train": path, "validation": f"{path}/test"}, "hf_disk", chat_template="chatml")
  assert _examples("t_fmt_dd") == [
      {"inputs": CHATML_PROMPT, "chosen": CHOSEN, "rejected": REJECTED},
      {"inputs": "<|im_start|>user\nOwl?<|im_end|>\n<|im_start|>assistant\n", "chosen": CHOSEN,
       "rejected": REJECTED}]
  assert [e["inputs"] for e in _examples("t_fmt_dd", "validation")] == [
      "<|im_start|>user\nOwl?<|im_end|>\n<|im_start|>assistant\n"]
  # SFT data: a DatasetDict of "messages"; its HH text equals the transcript's.
  lm = _save_dict_to_disk(tmp_path / "lm", {"train": [{"messages": TURNS + [_bot(CHOSEN)]}]},
                          pa.schema([("messages", MESSAGES)]))
  tasks.register_preference_file_task("t_fmt_dd_sft", lm, "hf_disk", kind="sft")
  assert _examples("t_fmt_dd_sft") == [{"inputs": HH_PROMPT, "targets": CHOSEN}]
  # A message with a null role (a struct field left empty) names the row and the field.
  bad = _save_dict_to_disk(tmp_path / "bad", {"train": [
      row, dict(row, chosen=[{"role": None, "content": "x"}])]}, schema)
  with pytest.raises(pf.DataError, match=r"bad/train: row 1: field 'chosen\.0\.role' must be a "
                                         r"string, got NoneType"):
    pf.read_records(bad, "hf_disk")


def test_hf_disk_unusable_directories_are_data_errors(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(pf.DataError, match=rf"directory not found: '{missing}'"):
    tasks.register_preference_file_task("t_fmt_disk_missing", missing, "hf_disk")
  with pytest.raises(pf.DataError, match=rf"{missing}: no such directory"):
    pf.read_records(missing, "hf_disk")
  a_file = _write(tmp_path / "f.jsonl", [EXPLICIT])
  with pytest.raises(pf.DataError, match=rf"{a_file}: not a directory"):
    pf.read_records(a_file, "hf_disk")
  (tmp_path / "empty").mkdir()
  with pytest.raises(pf.DataError, match=r"empty: no Arrow data files"):
    pf.read_records(str(tmp_path / "empty"), "hf_disk")
  no_train = _save_dict_to_disk(tmp_path / "dd", {"test": [EXPLICIT]}, pa.schema(
      [("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES)]))
  with pytest.raises(pf.DataError, match=r"dd: a DatasetDict with splits \['test'\] and no "
                                         r"'train': give the directory of the split"):
    pf.read_records(no_train, "hf_disk")
  assert pf.read_records(f"{no_train}/test", "hf_disk")[0]["inputs"] == HH_PROMPT
  broken = _save_to_disk(tmp_path / "broken", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
  (tmp_path / "broken" / "data-00000-of-00001.arrow").write_bytes(b"not arrow")
  with pytest.raises(pf.DataError, match=r"data-00000-of-00001\.arrow: cannot read as an Arrow "
                                         r"stream"):
    pf.read_records(broken, "hf_disk")
  (tmp_path / "broken" / "state.json").write_text("{")
  with pytest.raises(pf.DataError, match=r"state\.json: cannot read as JSON"):
    pf.read_records(broken, "hf_disk")


def test_hf_hub_without_the_datasets_package_says_how_to_get_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError.
  with pytest.raises(ValueError, match=r"format 'hf_hub' needs the Hugging Face `datasets` "
                                       r"package: pip install datasets .*format 'hf_disk'"):
    tasks.register_preference_file_task("t_fmt_hub", "trl-lib/ultrafeedback_binarized",
                                        "hf_hub")
  assert "t_fmt_hub" not in seqio.TaskRegistry.names()
  with pytest.raises(ValueError, match=r"pip install datasets"):
    pf.read_records("trl-lib/ultrafeedback_binarized", "hf_hub")


# ----------------------------------------------------------------------------- the jsonl experiment


def test_jsonl_experiment_reads_a_conversational_dataset_dict(tmp_path):
  """jsonl.gin with DATA_FORMAT='hf_disk' and CHAT_TEMPLATE='chatml': its tasks read the
  conversations, and every macro it sets is read."""
  schema = pa.schema([("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES)])
  rows = [dict(EXPLICIT, prompt=[_user(f"Question {i}?")]) for i in range(6)]
  path = _save_dict_to_disk(tmp_path / "dd", {"train": rows, "test": rows[:2]}, schema)
  cli.configure_gin(["experiments/jsonl.gin"], [
      f"DATA_TRAIN = '{path}'", f"DATA_VALIDATION = '{path}/test'", "DATA_FORMAT = 'hf_disk'",
      "CHAT_TEMPLATE = 'chatml'", "SPM_PATH = None", "PRETRAINED_CHECKPOINT = 'unused'",
      f"RUN_DIR = '{tmp_path}/run'"], [])
  assert not cli.unread_macros()
  want = [f"<|im_start|>user\nQuestion {i}?<|im_end|>\n<|im_start|>assistant\n" for i in range(6)]
  # (Some train prompts are held out for the judge: subsets.)
  prompts = [e["inputs"] for e in _examples("jsonl_prompts")]
  assert prompts and set(prompts) <= set(want)
  evals = [e["inputs"] for e in _examples("jsonl_eval_prompts", "validation")]
  assert evals and set(evals) <= set(want[:2])
  assert {(e["inputs"] in want, e["targets"]) for e in _examples("jsonl_sft")} == {(True, CHOSEN)}
  assert {(e["inputs"] in want, e["chosen"], e["rejected"]) for e in _examples("jsonl_pairs")} == {
      (True, CHOSEN, REJECTED)}
