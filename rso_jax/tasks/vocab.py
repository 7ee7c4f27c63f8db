"""Vocabularies: UTF-8 bytes by default, a SentencePiece model (e.g. the T5 vocab) from a path,
and the embedded task's word-level SentencePiece model (`synthetic_words_model`)."""
from __future__ import annotations

import functools
import os
from typing import Iterable

import seqio

# seqio.ByteVocabulary: pad=0, eos=1, unk=2, byte b -> id b + 3; vocab_size 259.
# The network pads its embedding table to 384 rows for bytes (a multiple of 128).
BYTE_VOCAB_SIZE = 259


@functools.lru_cache(maxsize=None)
def _spm_vocabulary(spm_path: str, extra_ids: int) -> seqio.Vocabulary:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(spm_path):
    raise ValueError(f"SentencePiece model file not found: spm_path={spm_path!r}")
  return seqio.SentencePieceVocabulary(spm_path, extra_ids=extra_ids)


def get_vocabulary(spm_path: str | None = None, extra_ids: int = 0) -> seqio.Vocabulary:
  """Returns `seqio.ByteVocabulary()` when `spm_path` is None/empty, else a SentencePiece vocab.

  Args:
    spm_path: path (local or gs://) of a SentencePiece `.model`, e.g. the T5 vocabulary
      `cc_all.32000.100extra/sentencepiece.model`. Bind it from gin.
    extra_ids: sentinel ids appended to a SentencePiece vocab (T5 uses 100); ignored for bytes.
  """
  if not spm_path:
    return seqio.ByteVocabulary()
  return _spm_vocabulary(str(spm_path), int(extra_ids))


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
