"""Real-shaped data made inside a test (no downloads): a SentencePiece model, TL;DR files,
TRL / Anthropic-HH JSONL, and a tiny random HuggingFace T5 imported with `rso_jax.convert`.

Every builder is deterministic given its arguments (seed included), writes into the directory
it is given and returns what it wrote. The text is generated English-like prose (Reddit-style
posts over a few subreddits), so the SentencePiece model segments it like real text does, and
posts have the length profile of TL;DR posts (100-300 SentencePiece tokens), checked with the
model when the files are made.

    spm = make_spm(d)                              # <d>/spm.model
    files = make_tldr_files(d, spm)                # {"sft_train", "sft_validation",
                                                   #  "comparisons_train", "comparisons_validation"}
    trl = make_trl_jsonl(d)                        # <d>/trl_pairs.jsonl
    hh = make_hh_jsonl(d)                          # <d>/hh.jsonl
    ckpt = make_hf_t5(d, spm)                      # <d>/converted (rso_jax checkpoint)
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Iterator, Sequence

import numpy as np

# ----------------------------------------------------------------------------- text generator

_TOPICS = {
    "relationships": ("girlfriend", "boyfriend", "wife", "husband", "partner", "date",
                      "relationship", "anniversary", "ex", "texts", "trust", "feelings"),
    "personalfinance": ("savings", "loan", "credit card", "rent", "budget", "salary", "debt",
                        "bank", "mortgage", "paycheck", "taxes", "car payment"),
    "running": ("marathon", "knee", "training plan", "shoes", "pace", "race", "long run",
                "coach", "injury", "trail", "miles", "stretching"),
    "cooking": ("recipe", "oven", "dinner", "pasta", "garlic", "knife", "kitchen", "sauce",
                "bread", "chicken", "spices", "pan"),
    "jobs": ("manager", "interview", "coworker", "office", "boss", "promotion", "contract",
             "resume", "shift", "raise", "team", "meeting"),
    "tifu": ("phone", "keys", "neighbor", "car", "dog", "laptop", "roommate", "coffee",
             "apartment", "door", "bus", "wallet"),
}
SUBREDDITS = tuple(_TOPICS)
_PEOPLE = ("my friend", "my sister", "my brother", "my mom", "my dad", "my roommate",
           "my coworker", "my neighbor", "a guy I know", "my best friend", "my cousin")
_TIMES = ("last week", "yesterday", "a few days ago", "two months ago", "this morning",
          "over the weekend", "last night", "earlier this year", "after work", "on Friday")
_DURATIONS = ("two years", "six months", "a few weeks", "almost a year", "three years",
              "a long time", "about a month", "since college")
_PLACES = ("at home", "at work", "in the city", "at the store", "downtown", "at school",
           "at the gym", "in the park", "on the train", "at a party")
_FEELINGS = ("upset", "confused", "happy", "nervous", "angry", "worried", "tired",
             "embarrassed", "excited", "frustrated", "stressed", "relieved")
_VERBS = ("talk about", "deal with", "forget", "fix", "ask about", "pay for", "look for",
          "think about", "plan", "change", "avoid", "handle", "explain", "keep")
_PAST = ("asked about", "forgot", "broke", "found", "lost", "paid for", "talked about",
         "ignored", "mentioned", "changed", "cancelled", "started", "finished", "moved")
_ADJ = ("great", "helpful", "strange", "awkward", "expensive", "new", "old", "important",
        "difficult", "simple", "weird", "perfect")
_FILLER = ("Honestly", "To be fair", "Anyway", "For context", "Long story short", "Edit",
           "Basically", "The thing is", "On top of that", "To make it worse")


_SYLLABLES = ("ka", "lo", "mi", "ren", "tas", "vel", "dor", "an", "bri", "sho", "ley", "ma",
              "tor", "qui", "nel", "zu", "par", "est", "lin", "gro")


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
  return seq[int(rng.integers(len(seq)))]


def _name(rng: np.random.Generator) -> str:
  """A made-up name (rare words: SentencePiece splits them into pieces, as real names are)."""
  return "".join(_pick(rng, _SYLLABLES) for _ in range(int(rng.integers(2, 4)))).capitalize()


def _person(rng: np.random.Generator) -> str:
  r = rng.random()
  if r < 0.25:
    return f"my {_pick(rng, ('friend', 'coworker', 'neighbor', 'roommate'))} {_name(rng)}"
  return _pick(rng, _PEOPLE)


def _sentence(rng: np.random.Generator, topic: str) -> str:
  nouns = _TOPICS[topic]
  n, m = _pick(rng, nouns), _pick(rng, nouns)
  templates = (
      lambda: f"I have been dealing with the {n} for {_pick(rng, _DURATIONS)} now.",
      lambda: f"{_person(rng).capitalize()} {_pick(rng, _PAST)} the {n} "
              f"{_pick(rng, _TIMES)}.",
      lambda: f"{_pick(rng, _TIMES).capitalize()}, {_person(rng)} {_pick(rng, _PAST)} "
              f"my {n} {_pick(rng, _PLACES)}.",
      lambda: f"I don't know if I should {_pick(rng, _VERBS)} the {n} or just "
              f"{_pick(rng, _VERBS)} the {m}.",
      lambda: f"It made me feel {_pick(rng, _FEELINGS)} because the {n} was so "
              f"{_pick(rng, _ADJ)}.",
      lambda: f"{_pick(rng, _FILLER)}, the {n} is not the real problem here.",
      lambda: f"We used to {_pick(rng, _VERBS)} the {n} together {_pick(rng, _PLACES)}, "
              f"but now it feels {_pick(rng, _ADJ)}.",
      lambda: f"Every time I try to {_pick(rng, _VERBS)} my {n}, {_person(rng)} gets "
              f"{_pick(rng, _FEELINGS)}.",
      lambda: f"Any advice on how to {_pick(rng, _VERBS)} a {_pick(rng, _ADJ)} {n} would "
              "really help.",
      lambda: f"I am {int(rng.integers(18, 45))} and this is the first time I had to "
              f"{_pick(rng, _VERBS)} a {n} like this.",
      lambda: f"Should I tell {_person(rng)} about the {n}?",
      lambda: f"It cost me about ${int(rng.integers(20, 3000)):,} and {_person(rng)} still "
              f"{_pick(rng, _PAST)} it.",
  )
  return templates[int(rng.integers(len(templates)))]()


def _title(rng: np.random.Generator, topic: str) -> str:
  age, sex = int(rng.integers(18, 45)), _pick(rng, ("M", "F"))
  n = _pick(rng, _TOPICS[topic])
  return _pick(rng, (
      f"{_person(rng).capitalize()} {_pick(rng, _PAST)} my {n}, what now?",
      f"Need advice about my {n} [{age}{sex}]",
      f"How do I {_pick(rng, _VERBS)} a {_pick(rng, _ADJ)} {n}?",
      f"I ({age}{sex}) feel {_pick(rng, _FEELINGS)} about the {n}",
  ))


def _summary(rng: np.random.Generator, topic: str, good: bool) -> str:
  """A short TL;DR: `good` ones name the post's topic; the others are generic."""
  if good:
    n = _pick(rng, _TOPICS[topic])
    return _pick(rng, (
        f"{_person(rng)} {_pick(rng, _PAST)} my {n} and I feel {_pick(rng, _FEELINGS)}.",
        f"not sure whether to {_pick(rng, _VERBS)} the {n}, need advice.",
        f"the {n} is {_pick(rng, _ADJ)} and I don't know what to do.",
    ))
  return _pick(rng, (
      "I have a problem and I need help.",
      f"things are {_pick(rng, _ADJ)}, what should I do?",
      f"I feel {_pick(rng, _FEELINGS)} about everything lately.",
  ))


def _corpus(seed: int, n_sentences: int = 3000) -> list[str]:
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n_sentences):
    topic = SUBREDDITS[i % len(SUBREDDITS)]
    out.append(_sentence(rng, topic))
    if i % 4 == 0:
      out.append(_title(rng, topic))
      out.append(_summary(rng, topic, good=bool(i % 8)))
    if i % 10 == 0:
      out.append(f"SUBREDDIT: r/{topic} TITLE: {_title(rng, topic)} POST: "
                 f"{_sentence(rng, topic)} TL;DR:")
      out.append(f"Human: {_question(rng, topic)} Assistant: {_answer(rng, topic, True)}")
  return out


def _question(rng: np.random.Generator, topic: str) -> str:
  n = _pick(rng, _TOPICS[topic])
  return _pick(rng, (f"How do I {_pick(rng, _VERBS)} my {n}?",
                     f"What should I do if {_person(rng)} {_pick(rng, _PAST)} my {n}?",
                     f"Can you help me {_pick(rng, _VERBS)} a {_pick(rng, _ADJ)} {n}?"))


def _answer(rng: np.random.Generator, topic: str, helpful: bool) -> str:
  n = _pick(rng, _TOPICS[topic])
  if helpful:
    return (f"A good first step is to {_pick(rng, _VERBS)} the {n} calmly. "
            f"If you feel {_pick(rng, _FEELINGS)}, talk to {_person(rng)} first.")
  return _pick(rng, ("I don't know.", "That is not my problem.",
                     f"Just {_pick(rng, _VERBS)} it, whatever."))


# ----------------------------------------------------------------------------- builders


def make_spm(directory: str, vocab_size: int = 800, seed: int = 0) -> str:
  """A SentencePiece model of `vocab_size` pieces trained on the generated English-like text,
  with T5's special ids (pad 0, eos 1, unk 2, no bos); returns `<directory>/spm.model`. BPE,
  which segments this small corpus like English ("▁should", "▁don ' t", made-up names in
  pieces; a unigram model this small splits common words oddly). Under 1 s."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  os.makedirs(str(directory), exist_ok=True)
  prefix = os.path.join(str(directory), "spm")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_corpus(seed)), model_prefix=prefix, vocab_size=vocab_size,
      model_type="bpe", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      num_threads=1, minloglevel=2)
  return prefix + ".model"


def _spm(spm_path: str):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  return spm.SentencePieceProcessor(model_file=str(spm_path))


POST_TOKENS = (100, 300)  # SentencePiece tokens of a post (inclusive)
SUMMARY_TOKENS = (5, 20)


def _post(rng: np.random.Generator, topic: str, sp) -> str:
  """Sentences until a drawn target length; a sentence that overshoots 300 is redrawn."""
  lo, hi = POST_TOKENS
  target = int(rng.integers(lo + 10, hi - 20))
  sentences, n = [], 0
  while n < target:
    for _ in range(20):
      s = _sentence(rng, topic)
      m = len(sp.encode(" ".join(sentences + [s])))
      if m <= hi:
        break
    else:  # pragma: no cover - sentences are far shorter than the slack
      raise AssertionError("cannot fit a sentence")
    sentences.append(s)
    n = m
  return " ".join(sentences)


def _short(rng: np.random.Generator, topic: str, good: bool, sp) -> str:
  lo, hi = SUMMARY_TOKENS
  for _ in range(100):
    s = _summary(rng, topic, good)
    if lo <= len(sp.encode(s)) <= hi:
      return s
  raise AssertionError("no summary of 5-20 tokens")  # pragma: no cover


def _write_jsonl(path: str, rows: Sequence[dict]) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return path


def make_tldr_files(directory: str, spm_path: str, n_train: int = 64, n_val: int = 16,
                    seed: int = 0, comparisons_per_post: int = 3,
                    label_noise: float = 0.2) -> dict[str, str]:
  """TL;DR-format files (OpenAI summarize-from-feedback shapes) over `n_train` + `n_val` posts.

  Writes, in `directory`:
    tldr_sft_train.jsonl / tldr_sft_validation.jsonl (format "tldr_sft"): one record per post,
      {"id", "subreddit", "title", "post", "summary"};
    tldr_comparisons_train.jsonl / tldr_comparisons_validation.jsonl (format
      "tldr_comparisons"): each post of the split in 1 .. 2*comparisons_per_post - 1
      comparisons (mean `comparisons_per_post`), shuffled so one post's comparisons are
      scattered (the "prompts" kind must deduplicate them): {"info": {"id", "subreddit",
      "title", "post"}, "summaries": [{"text", "policy", "note"}] * 2, "choice", "worker",
      "batch", "split"}.
  Posts are 100-300 tokens of the `spm_path` model, summaries 5-20; one summary of a
  comparison names the post's topic and is the choice with probability 1 - label_noise.
  Train and validation posts are distinct. Returns {"sft_train", "sft_validation",
  "comparisons_train", "comparisons_validation"} -> path.
  """
  os.makedirs(str(directory), exist_ok=True)
  sp = _spm(spm_path)
  rng = np.random.default_rng(seed)
  seen: set[str] = set()
  out = {}
  for split, n, tag in (("train", n_train, "train"), ("validation", n_val, "valid1")):
    posts = []
    while len(posts) < n:
      topic = SUBREDDITS[int(rng.integers(len(SUBREDDITS)))]
      post = _post(rng, topic, sp)
      if post in seen:
        continue
      seen.add(post)
      posts.append({"id": f"t3_{split[0]}{len(posts):05d}", "subreddit": topic,
                    "title": _title(rng, topic), "post": post})
    sft = [dict(p, summary=_short(rng, p["subreddit"], True, sp)) for p in posts]
    comparisons = []
    for p in posts:
      for _ in range(int(rng.integers(1, 2 * comparisons_per_post))):
        good = _short(rng, p["subreddit"], True, sp)
        bad = _short(rng, p["subreddit"], False, sp)
        good_first = bool(rng.integers(2))
        texts = [good, bad] if good_first else [bad, good]
        choice = (0 if good_first else 1) ^ int(rng.random() < label_noise)
        comparisons.append({
            "info": dict(p), "split": tag, "choice": choice,
            "summaries": [{"text": t, "policy": _pick(rng, ("sup2", "ref", "ppo_xl")),
                           "note": None} for t in texts],
            "worker": f"w{int(rng.integers(20))}", "batch": f"batch{int(rng.integers(3, 9))}"})
    order = rng.permutation(len(comparisons))
    comparisons = [comparisons[i] for i in order]
    out[f"sft_{split}"] = _write_jsonl(os.path.join(str(directory), f"tldr_sft_{split}.jsonl"),
                                       sft)
    out[f"comparisons_{split}"] = _write_jsonl(
        os.path.join(str(directory), f"tldr_comparisons_{split}.jsonl"), comparisons)
  return out


def _words_between(rng: np.random.Generator, topic: str, lo: int, hi: int) -> str:
  target = int(rng.integers(lo, hi + 1))
  words: list[str] = []
  while len(words) < target:
    words += _sentence(rng, topic).split()
  words = words[:target]
  return " ".join(words).rstrip(",.?") + "?"


def make_trl_jsonl(directory: str, n: int = 64, seed: int = 0) -> str:
  """TRL preference JSONL (formats "jsonl"): {"prompt", "chosen", "rejected"} per line, prompts
  of 20-60 words, distinct chosen / rejected responses. Returns `<directory>/trl_pairs.jsonl`."""
  os.makedirs(str(directory), exist_ok=True)
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    topic = SUBREDDITS[int(rng.integers(len(SUBREDDITS)))]
    rows.append({"prompt": _words_between(rng, topic, 20, 60),
                 "chosen": _answer(rng, topic, True), "rejected": _answer(rng, topic, False)})
  return _write_jsonl(os.path.join(str(directory), "trl_pairs.jsonl"), rows)


def make_hh_jsonl(directory: str, n: int = 64, seed: int = 0) -> str:
  """Anthropic HH-RLHF JSONL (format "hh"): {"chosen", "rejected"} transcripts of 1-3
  "\\n\\nHuman: ...\\n\\nAssistant: ..." turns that share everything up to the last
  "\\n\\nAssistant:" and differ in its reply. Returns `<directory>/hh.jsonl`."""
  os.makedirs(str(directory), exist_ok=True)
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    topic = SUBREDDITS[int(rng.integers(len(SUBREDDITS)))]
    context = ""
    for _ in range(int(rng.integers(0, 3))):  # earlier turns, each with a reply
      context += f"\n\nHuman: {_question(rng, topic)}\n\nAssistant: {_answer(rng, topic, True)}"
    context += f"\n\nHuman: {_question(rng, topic)}\n\nAssistant:"  # the compared reply's turn
    rows.append({"chosen": f"{context} {_answer(rng, topic, True)}",
                 "rejected": f"{context} {_answer(rng, topic, False)}"})
  return _write_jsonl(os.path.join(str(directory), "hh.jsonl"), rows)


def make_hf_t5(directory: str, spm_path: str, seed: int = 0, d_model: int = 64,
               num_layers: int = 2, num_heads: int = 4, d_kv: int = 16, d_ff: int = 128,
               extra_ids: int = 100) -> str:
  """A random tiny T5 v1.1 (gated-gelu, untied head, dropout 0.1 as HF's default) saved by
  transformers, imported.

  Writes `<directory>/hf` (`save_pretrained` safetensors + `spiece.model` +
  `tokenizer_config.json` with `extra_ids`) with vocab_size = pieces + `extra_ids` rounded up
  to a multiple of 128, and imports it with `rso_jax.convert` (Python API) into
  `<directory>/converted`: params + manifest (kind "seq2seq", source "convert", SentencePiece
  vocabulary with `extra_ids`, the model copied beside it). The head is drawn with std
  d_model**-0.5 so logits are O(1) and samples vary. Returns the converted checkpoint path.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from rso_jax import convert  # pylint: disable=g-import-not-at-top
  pieces = _spm(spm_path).get_piece_size()
  vocab_size = -(-(pieces + extra_ids) // 128) * 128
  cfg = transformers.T5Config(
      vocab_size=vocab_size, d_model=d_model, d_kv=d_kv, num_heads=num_heads, d_ff=d_ff,
      num_layers=num_layers, num_decoder_layers=num_layers, relative_attention_num_buckets=32,
      dropout_rate=0.1, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
  with torch.random.fork_rng(devices=[]):
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    # A head of its own (transformers 5 otherwise ties an unscaled head to the embedding).
    model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab_size, d_model) * d_model**-0.5)
    model.config.tie_word_embeddings = False
  hf_dir = os.path.join(str(directory), "hf")
  model.save_pretrained(hf_dir, safe_serialization=True)
  spm_copy = os.path.join(hf_dir, "spiece.model")
  shutil.copyfile(spm_path, spm_copy)
  with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"extra_ids": extra_ids, "model_max_length": 512}, f)
  out = os.path.join(str(directory), "converted")
  vocab = convert.vocabulary_spec(hf_dir, vocab_size, spm_path=spm_copy, extra_ids=extra_ids)
  config, params = convert.from_hf(hf_dir)
  convert.save_converted(out, config, params, vocab)
  return out


def post_token_lengths(path: str, spm_path: str) -> Iterator[int]:
  """SentencePiece token counts of the posts of a tldr_sft / tldr_comparisons file."""
  sp = _spm(spm_path)
  with open(path, encoding="utf-8") as f:
    for line in f:
      obj = json.loads(line)
      yield len(sp.encode((obj.get("info") or obj)["post"]))
