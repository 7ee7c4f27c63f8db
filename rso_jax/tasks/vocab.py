"""Vocabularies: UTF-8 bytes by default, a SentencePiece model (e.g. the T5 vocab) from a path, a
Hugging Face tokenizer (`tokenizer.json`) from a path, and the embedded task's word-level
SentencePiece model (`synthetic_words_model`).

`get_vocabulary(spm_path)` picks by the path: none -> bytes; a `tokenizer.json` file, or a
directory holding one -> `HFTokenizerVocabulary`; anything else -> a SentencePiece model.

HF tokenizers and rso ids. rso_jax keeps id 0 for padding (masks are `tokens > 0`), while a HF
vocabulary's id 0 is a real token, so `HFTokenizerVocabulary` shifts every id by one: rso id
`k + 1` is the HF token `k` (what `decoder_network` reads), `vocab_size` = the HF vocabulary's
size + 1, `eos_id` = the HF EOS + 1. Text is encoded without special tokens: the pipeline
appends EOS, and a BOS, where a model needs one, is the chat template's / text format's.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import seqio

from rso_jax import fs

# seqio.ByteVocabulary: pad=0, eos=1, unk=2, byte b -> id b + 3; vocab_size 259.
# The network pads its embedding table to 384 rows for bytes (a multiple of 128).
BYTE_VOCAB_SIZE = 259
HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
HF_CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where newer HF saves put the chat template


@functools.lru_cache(maxsize=None)
def _spm_vocabulary(spm_path: str, extra_ids: int) -> seqio.Vocabulary:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(spm_path):
    raise ValueError(f"SentencePiece model file not found: spm_path={spm_path!r}")
  return seqio.SentencePieceVocabulary(spm_path, extra_ids=extra_ids)


def hf_tokenizer_file(path: str | None) -> Optional[str]:
  """The absolute path of the `tokenizer.json` that `path` names (the file, or a directory
  holding one), else None. ValueError naming the path for a directory without one."""
  if not path:
    return None
  path = str(path)
  if fs.basename(path.rstrip("/")) == HF_TOKENIZER_FILE:
    return fs.abspath(path)
  if fs.isdir(path):
    found = fs.join(fs.abspath(path), HF_TOKENIZER_FILE)
    if not fs.exists(found):
      raise ValueError(f"spm_path={path!r} is a directory without a {HF_TOKENIZER_FILE} (a HF "
                       "tokenizer); give a SentencePiece .model file or a HF tokenizer")
    return found
  return None


@functools.lru_cache(maxsize=None)
def hf_vocabulary(tokenizer_file: str, eos_token: Optional[str] = None
                  ) -> "HFTokenizerVocabulary":
  """The (cached) `HFTokenizerVocabulary` of a `tokenizer.json`; `eos_token` is used only when
  no tokenizer_config.json beside it names one."""
  return HFTokenizerVocabulary(tokenizer_file, eos_token=eos_token)


def get_vocabulary(spm_path: str | None = None, extra_ids: int = 0) -> seqio.Vocabulary:
  """`seqio.ByteVocabulary()` when `spm_path` is None/empty; an `HFTokenizerVocabulary` when it
  names a `tokenizer.json` (or a directory holding one); else a SentencePiece vocabulary.

  Args:
    spm_path: path (local or gs://) of a SentencePiece `.model`, e.g. the T5 vocabulary
      `cc_all.32000.100extra/sentencepiece.model`, or of a HF `tokenizer.json` / a HF model
      directory. Bind it from gin.
    extra_ids: sentinel ids appended to a SentencePiece vocab (T5 uses 100); ignored for bytes;
      must be 0 for a HF tokenizer.
  """
  if not spm_path:
    return seqio.ByteVocabulary()
  hf_file = hf_tokenizer_file(spm_path)
  if hf_file is not None:
    if int(extra_ids):
      raise ValueError(f"extra_ids={extra_ids!r} with the HF tokenizer spm_path={spm_path!r}: "
                       "a HF tokenizer has no sentinel ids; use extra_ids=0")
    return hf_vocabulary(hf_file)
  return _spm_vocabulary(str(spm_path), int(extra_ids))


# ------------------------------------------------------------------------------ HF tokenizers


class ChatTemplateError(ValueError):
  """A chat template failed to render: its `raise_exception(...)`, or a Jinja error."""


def _token_content(value: Any, what: str, where: str) -> Optional[str]:
  """A special token of tokenizer_config.json: a string, {"content": str, ...} or None."""
  if value is None or isinstance(value, str):
    return value or None
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"] or None
  raise ValueError(f"{where}: {what} must be a string or {{'content': str}}, got {value!r}")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  """transformers' `tojson` filter (no HTML escaping, unlike Jinja's own)."""
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _raise_exception(message):
  import jinja2  # pylint: disable=g-import-not-at-top
  raise jinja2.exceptions.TemplateError(message)


class HFTokenizerVocabulary(seqio.Vocabulary):
  """A seqio vocabulary over a Hugging Face `tokenizer.json` (the `tokenizers` library).

  Ids: rso id = HF id + 1; 0 is padding; `vocab_size` = HF vocabulary size (added tokens
  included) + 1; `eos_id` / `unk_id` / `bos_id` = the HF token's id + 1 (unk, bos: None when
  the tokenizer has none). The EOS is `eos_token` of the `tokenizer_config.json` beside the
  file, else the `eos_token` argument. Encoding adds no special tokens; decoding stops at EOS,
  drops padding and keeps the other special tokens as text.

  `tokenizer_file` / `tokenizer_config_file` are the paths read (the latter None when absent);
  `chat_template` is the config's Jinja chat template (or `chat_template.jinja` beside it), or
  None; `apply_chat_template` renders it as transformers does.
  """

  def __init__(self, tokenizer_file: str, eos_token: Optional[str] = None):
    super().__init__(extra_ids=0)
    self.tokenizer_file = str(tokenizer_file)
    if not fs.exists(self.tokenizer_file):
      raise ValueError(f"HF tokenizer file not found: {self.tokenizer_file!r}")
    self._json = fs.read_bytes(self.tokenizer_file)
    directory = fs.dirname(self.tokenizer_file)
    config_file = fs.join(directory, HF_TOKENIZER_CONFIG_FILE)
    self.tokenizer_config_file = config_file if fs.exists(config_file) else None
    self._config: dict[str, Any] = {}
    if self.tokenizer_config_file:
      try:
        self._config = json.loads(fs.read_bytes(config_file).decode("utf-8"))
      except ValueError as e:
        raise ValueError(f"{config_file}: not a JSON tokenizer config ({e})") from None
      if not isinstance(self._config, dict):
        raise ValueError(f"{config_file}: not a JSON object")
    self._chat_template, self._chat_template_source = self._read_chat_template(directory)
    self._eos_token_arg = eos_token
    self._tokenizer = None
    self._template = None
    self._load()

  def _read_chat_template(self, directory: str) -> tuple[Optional[str], Optional[str]]:
    """(the Jinja source, where it came from): the config's `chat_template` (a string, or a
    list of {"name", "template"} whose "default" is taken), else `chat_template.jinja`."""
    where = self.tokenizer_config_file
    value = self._config.get("chat_template")
    if isinstance(value, list):
      named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
      if "default" not in named:
        raise ValueError(f"{where}: chat_template is a list of named templates "
                         f"{sorted(map(str, named))} without a 'default' one")
      value = named["default"]
    if value is not None and not isinstance(value, str):
      raise ValueError(f"{where}: chat_template must be a Jinja string, got {value!r:.80}")
    if value:
      return value, where
    jinja_file = fs.join(directory, HF_CHAT_TEMPLATE_FILE)
    if fs.exists(jinja_file):
      return fs.read_bytes(jinja_file).decode("utf-8"), jinja_file
    return None, None

  def _load(self) -> None:
    import tokenizers  # pylint: disable=g-import-not-at-top
    try:
      self._tokenizer = tokenizers.Tokenizer.from_str(self._json.decode("utf-8"))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{self.tokenizer_file}: cannot read as a HF tokenizer.json: "
                       f"{' '.join(str(e).split())}") from None
    where = self.tokenizer_config_file or self.tokenizer_file
    tokens = {k: _token_content(self._config.get(k), k, where)
              for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    eos = tokens["eos_token"]
    if eos and self._eos_token_arg and eos != self._eos_token_arg:
      raise ValueError(f"eos_token={self._eos_token_arg!r} differs from the eos_token {eos!r} "
                       f"of {self.tokenizer_config_file}")
    eos = eos or self._eos_token_arg
    if not eos:
      beside = (f"{self.tokenizer_config_file} has no eos_token" if self.tokenizer_config_file
                else f"there is no {HF_TOKENIZER_CONFIG_FILE} beside it")
      raise ValueError(f"HF tokenizer {self.tokenizer_file!r}: no EOS token ({beside}); add "
                       "eos_token to the config or pass eos_token=...")
    if tokens["unk_token"] is None:  # the model's own (BPE, WordLevel, WordPiece)
      tokens["unk_token"] = getattr(self._tokenizer.model, "unk_token", None) or None
    self._special_tokens = {k: v for k, v in tokens.items() if v is not None}
    self._special_tokens["eos_token"] = eos
    ids = {}
    for key, token in self._special_tokens.items():
      hf_id = self._tokenizer.token_to_id(token)
      if hf_id is None and key == "eos_token":
        raise ValueError(f"HF tokenizer {self.tokenizer_file!r}: its eos_token {token!r} (from "
                         f"{self.tokenizer_config_file or 'the eos_token argument'}) is not a "
                         "token of the vocabulary")
      ids[key] = None if hf_id is None else hf_id + 1
    self._eos_id, self._unk_id, self._bos_id = (ids.get("eos_token"), ids.get("unk_token"),
                                                ids.get("bos_token"))
    self._hf_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    self._sha256 = hashlib.sha256(self._json).hexdigest()

  def __getstate__(self):  # picklable (gin deep-copies configurables' arguments)
    state = self.__dict__.copy()
    state["_tokenizer"] = state["_template"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._load()

  @property
  def tokenizer(self):
    """The `tokenizers.Tokenizer` (HF ids, no shift)."""
    return self._tokenizer

  @property
  def tokenizer_json(self) -> bytes:
    """The bytes of `tokenizer_file`, as read."""
    return self._json

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def unk_id(self) -> Optional[int]:
    return self._unk_id

  @property
  def bos_id(self) -> Optional[int]:
    return self._bos_id

  @property
  def _base_vocab_size(self) -> int:
    return self._hf_size + 1

  @property
  def special_tokens(self) -> Mapping[str, str]:
    """{"eos_token": ..., and "bos_token" / "unk_token" / "pad_token" where there is one}."""
    return dict(self._special_tokens)

  # --------------------------------------------------------------------------- Python

  def _encode(self, s: str) -> Sequence[int]:
    return [i + 1 for i in self._tokenizer.encode(s, add_special_tokens=False).ids]

  def _hf_ids(self, ids: Iterable[int]) -> list[int]:
    """rso ids up to the first EOS, padding dropped, shifted to HF ids."""
    out = []
    for i in ids:
      i = int(i)
      if i == self._eos_id:
        break
      if i <= 0:
        continue
      if i > self._hf_size:
        raise ValueError(f"token id {i} is outside the HF tokenizer {self.tokenizer_file!r} "
                         f"(rso ids 1..{self._hf_size})")
      out.append(i - 1)
    return out

  def _decode(self, ids: Iterable[int]) -> str:
    return self._tokenizer.decode(self._hf_ids(ids), skip_special_tokens=False)

  # --------------------------------------------------------------------------- TensorFlow

  def _encode_np(self, s) -> np.ndarray:
    return np.asarray(self._encode(s.decode("utf-8")), np.int32)

  def _encode_batch_np(self, flat) -> tuple[np.ndarray, np.ndarray]:
    encs = self._tokenizer.encode_batch([s.decode("utf-8") for s in flat],
                                        add_special_tokens=False)
    lengths = np.asarray([len(e.ids) for e in encs], np.int64)
    values = np.asarray([i + 1 for e in encs for i in e.ids], np.int32)
    return values, lengths

  def _decode_batch_np(self, rows) -> np.ndarray:
    texts = self._tokenizer.decode_batch([self._hf_ids(r) for r in rows],
                                         skip_special_tokens=False)
    return np.asarray([t.encode("utf-8") for t in texts], dtype=object)

  def _encode_tf(self, s):
    """A string tensor of any rank -> its ids: a scalar gives `[L]` int32; shape `[...]`
    gives a RaggedTensor `[..., (L)]` (as SentencePiece's TF tokenizer does)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    s = tf.convert_to_tensor(s, tf.string)
    rank = s.shape.rank
    if rank is None:
      raise ValueError(f"encode_tf needs a string tensor of known rank, got {s!r}")
    if rank == 0:
      ids = tf.numpy_function(self._encode_np, [s], tf.int32, stateful=False)
      ids.set_shape([None])
      return ids
    values, lengths = tf.numpy_function(self._encode_batch_np, [tf.reshape(s, [-1])],
                                        [tf.int32, tf.int64], stateful=False)
    values.set_shape([None])
    lengths.set_shape([None])
    out = tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)
    shape = tf.shape(s, out_type=tf.int64)
    for d in range(rank - 1, 0, -1):
      out = tf.RaggedTensor.from_uniform_row_length(out, shape[d], validate=False)
    return out

  def _decode_tf(self, ids):
    """Ids `[..., L]` (dense or ragged) -> strings `[...]` (a scalar for `[L]`)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if isinstance(ids, tf.RaggedTensor):
      ids = ids.to_tensor(0)  # 0 is padding: dropped
    ids = tf.convert_to_tensor(ids)
    rank = ids.shape.rank
    if rank is None or rank == 0:
      raise ValueError(f"decode_tf needs ids of rank >= 1, got {ids!r}")
    flat = tf.reshape(ids, [-1, tf.shape(ids)[-1]])
    texts = tf.numpy_function(self._decode_batch_np, [flat], tf.string, stateful=False)
    texts.set_shape([None])
    return tf.reshape(texts, tf.shape(ids)[:-1])

  # --------------------------------------------------------------------------- chat template

  @property
  def chat_template(self) -> Optional[str]:
    """The Jinja chat template (tokenizer_config.json's, or chat_template.jinja), or None."""
    return self._chat_template

  def apply_chat_template(self, messages: Sequence[Mapping[str, str]],
                          add_generation_prompt: bool = True) -> str:
    """`messages` ([{"role", "content"}, ...]) rendered with the chat template, as transformers
    renders it (`ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks)`; `messages`,
    `add_generation_prompt` and the special tokens as variables; `raise_exception`). Raises
    ValueError when the tokenizer has no template, ChatTemplateError when rendering fails."""
    if self._chat_template is None:
      where = (f"{self.tokenizer_config_file} has no chat_template" if self.tokenizer_config_file
               else f"there is no {HF_TOKENIZER_CONFIG_FILE} beside it")
      raise ValueError(f"HF tokenizer {self.tokenizer_file!r} has no chat template ({where})")
    import jinja2  # pylint: disable=g-import-not-at-top
    try:
      if self._template is None:
        import jinja2.ext  # pylint: disable=g-import-not-at-top
        import jinja2.sandbox  # pylint: disable=g-import-not-at-top
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        self._template = env.from_string(self._chat_template)
      return self._template.render(
          messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
          **self._special_tokens)
    except jinja2.exceptions.TemplateError as e:
      raise ChatTemplateError(f"chat template of {self._chat_template_source}: {e}") from None

  # --------------------------------------------------------------------------- identity

  def _identity(self) -> tuple[Any, ...]:
    return (self._sha256, self._eos_id, self._unk_id, self._bos_id, self._chat_template)

  def __eq__(self, other):
    if not isinstance(other, HFTokenizerVocabulary):
      return False
    return self._identity() == other._identity()

  def __hash__(self):
    return hash(self._identity())

  def __str__(self) -> str:
    return (f"HFTokenizerVocabulary(file={self.tokenizer_file}, vocab_size={self.vocab_size}, "
            f"eos_id={self.eos_id}, sha256={self._sha256[:12]})")


# The embedded task's vocabulary: a SentencePiece model in which every lexicon word is one piece
# ("▁owl"), as are the reward models' answers "A" / "B" and their tags; 67 pieces. Made by
# `train_synthetic_words_model` (deterministic) and shipped beside this module.
SYNTHETIC_WORDS_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                     "synthetic_words.model")
WORDS_USER_SYMBOLS = ("[CONTEXT]", "[RESPONSE]", "[RESPONSE")


def synthetic_words_model() -> str:
  """The path of the embedded task's word-level SentencePiece model (gin: SYNTHETIC_SPM)."""
  return SYNTHETIC_WORDS_MODEL


def train_synthetic_words_model(model_prefix: str, texts: Iterable[str]) -> str:
  """Trains the word-level model on `texts` (the synthetic task's prompts, responses, and the
  reward models' packed / ranking inputs); returns `<model_prefix>.model`."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    # One rule (ideographic space -> space): a normalizer a few bytes long. No rule at all
    # leaves an empty one, which TensorFlow's op announces at every load; NFKC's is 240 kB.
    rules = os.path.join(tmp, "rules.tsv")
    with open(rules, "w") as f:
      f.write("3000\t20\n")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_prefix=model_prefix, vocab_size=100,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        hard_vocab_limit=False, user_defined_symbols=list(WORDS_USER_SYMBOLS),
        normalization_rule_tsv=rules, num_threads=1, minloglevel=2)
  return model_prefix + ".model"
