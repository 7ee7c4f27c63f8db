"""Vocabularies: UTF-8 bytes by default, a SentencePiece model (e.g. the T5 vocab) from a path."""
from __future__ import annotations

import functools

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
