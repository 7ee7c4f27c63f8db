"""The vocabularies: the embedded task's word-level SentencePiece model (rso_jax/tasks/vocab.py)."""

import itertools

import sentencepiece as spm

from rso_jax.tasks import synthetic as syn
from rso_jax.tasks import text_formats
from rso_jax.tasks import vocab


def test_words_model_holds_every_synthetic_text_in_few_pieces():
  v = vocab.get_vocabulary(vocab.synthetic_words_model())
  for w in syn.LEXICON:
    assert len(v.encode(w)) == 1 and len(v.encode(" ".join([w, w]))) == 2, w
  for answer in ("A", "B"):  # the pairwise reward model reads its answer as one token
    assert len(v.encode(answer)) == 1
  data = syn.build_environment(syn.EnvConfig())
  texts = list(itertools.chain(*data.prompts.values(), *data.sft.values()))
  texts += [y for split in data.dhf.values() for p in split for y in (p.chosen, p.rejected)]
  for t in texts:  # lossless, and within the embedded experiment's 8 tokens with EOS
    ids = v.encode(t)
    assert v.decode(ids) == t and len(ids) + 1 <= 8, (t, ids)
  for q in data.dhf["validation"][:200]:
    for t in (text_formats.ranking_input_text(q.prompt, q.chosen, q.rejected),
              q.prompt + text_formats.BT_SEPARATOR + q.chosen):
      ids = v.encode(t)
      assert v.decode(ids) == t and 2 not in ids, t  # no unknown piece


def test_words_model_is_what_its_recipe_trains(tmp_path):
  data = syn.build_environment(syn.EnvConfig())
  path = vocab.train_synthetic_words_model(str(tmp_path / "w"), syn.vocabulary_corpus(data))
  pieces = lambda p: [spm.SentencePieceProcessor(model_file=p).id_to_piece(i) for i in range(
      spm.SentencePieceProcessor(model_file=p).get_piece_size())]
  assert pieces(path) == pieces(vocab.synthetic_words_model())


def test_same_vocabulary_is_the_model_files_bytes_not_its_path(tmp_path):
  """A checkpoint made in one clone and read in another names its SentencePiece file by another
  path: the same bytes are the same vocabulary; another model or bytes is not."""
  import seqio
  from rso_jax import checkpoints
  here = vocab.synthetic_words_model()
  moved = tmp_path / "elsewhere.model"
  moved.write_bytes(open(here, "rb").read())
  assert checkpoints.same_vocabulary(vocab.get_vocabulary(here), vocab.get_vocabulary(str(moved)))
  assert checkpoints.same_vocabulary(vocab.get_vocabulary(here),
                                     vocab.get_vocabulary(here, extra_ids=3))  # sentinels only
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["owl cat ram", "cat dog"] * 50),
                                 model_prefix=str(tmp_path / "other"), vocab_size=7,
                                 model_type="word", minloglevel=2)
  other = vocab.get_vocabulary(str(tmp_path / "other.model"))
  assert not checkpoints.same_vocabulary(vocab.get_vocabulary(here), other)
  assert not checkpoints.same_vocabulary(vocab.get_vocabulary(here), seqio.ByteVocabulary())
  assert checkpoints.same_vocabulary(seqio.ByteVocabulary(), seqio.ByteVocabulary())
