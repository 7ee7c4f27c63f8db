"""The vocabularies (rso_jax/tasks/vocab.py): the embedded task's word-level SentencePiece model,
HF tokenizers (ids shifted by one, the TF path, the chat template)."""

import itertools
import json
import os
import pickle
import shutil

import helpers
import numpy as np
import pytest
import seqio
import sentencepiece as spm
import tokenizers

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


# ----------------------------------------------------------------------------- HF tokenizers

HF_WORDS = ("owl", "cat", "ram", "dog", "eel", "hen")
HF_TEXTS = ["owl cat", " dog", "A", "B", "owl A B", "héllo, wörld!\n\tünïcode 😀", "",
            "<|im_start|>user\nowl<|im_end|>\n", "  two  spaces  "]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return helpers.write_hf_tokenizer(tmp_path_factory.mktemp("hf_tok"), HF_WORDS)


def _hf_config(directory, **changes):
  path = os.path.join(str(directory), "tokenizer_config.json")
  with open(path) as f:
    config = json.load(f)
  config.update(changes)
  config = {k: v for k, v in config.items() if v is not _DROP}
  with open(path, "w") as f:
    json.dump(config, f)


_DROP = object()


def _copy_tokenizer(src, dst, config=True):
  os.makedirs(dst, exist_ok=True)
  names = ["tokenizer.json"] + (["tokenizer_config.json"] if config else [])
  for name in names:
    shutil.copy(os.path.join(src, name), os.path.join(dst, name))
  return str(dst)


def test_hf_vocabulary_is_the_tokenizers_ids_plus_one(hf_dir):
  tok = tokenizers.Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
  v = vocab.get_vocabulary(hf_dir)
  assert isinstance(v, vocab.HFTokenizerVocabulary)
  assert v.vocab_size == tok.get_vocab_size(with_added_tokens=True) + 1
  assert v.eos_id == tok.token_to_id("<|endoftext|>") + 1 == 1  # HF id 0 is a real token
  assert v.pad_id == 0 and v.unk_id is None and v.bos_id is None and v.extra_ids == 0
  for t in HF_TEXTS:
    ids = v.encode(t)
    assert ids == [i + 1 for i in tok.encode(t, add_special_tokens=False).ids], t
    assert v.decode(ids) == t and all(0 < i < v.vocab_size for i in ids), t
  for w in HF_WORDS + ("A", "B"):  # one token alone and after a space
    assert len(v.encode(w)) == 1 and len(v.encode(f"{w} {w}")) == 2, w
  im_start, im_end = (tok.token_to_id(t) + 1 for t in ("<|im_start|>", "<|im_end|>"))
  assert v.encode("<|im_start|>owl<|im_end|>") == [im_start, v.encode("owl")[0], im_end]
  # seqio's decode: through the first EOS; padding dropped; other special tokens kept as text.
  ids = v.encode("owl cat")
  assert v.decode([0] + ids + [v.eos_id] + v.encode(" dog") + [0, 0]) == "owl cat"
  assert v.decode(ids + [im_end]) == "owl cat<|im_end|>"
  with pytest.raises(ValueError, match=rf"token id {v.vocab_size} is outside the HF tokenizer"):
    v.decode([v.vocab_size])


def test_hf_encoding_adds_no_special_tokens(hf_dir, tmp_path):
  """A tokenizer whose post-processor adds a BOS: the pipeline's text gets none (EOS is the
  pipeline's, a BOS the chat template's)."""
  d = _copy_tokenizer(hf_dir, tmp_path / "bos")
  tok = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="<|im_start|> $A", special_tokens=[("<|im_start|>", tok.token_to_id("<|im_start|>"))])
  tok.save(os.path.join(d, "tokenizer.json"))
  v = vocab.get_vocabulary(d)
  assert tok.encode("owl").ids[0] == tok.token_to_id("<|im_start|>")
  assert v.encode("owl") == [i + 1 for i in tok.encode("owl", add_special_tokens=False).ids]
  assert v != vocab.get_vocabulary(hf_dir)  # another tokenizer.json


def test_hf_tf_path_equals_the_python_path(hf_dir):
  import tensorflow as tf
  v = vocab.get_vocabulary(hf_dir)
  ds = tf.data.Dataset.from_tensor_slices(HF_TEXTS).map(v.encode_tf)
  assert [x.tolist() for x in ds.as_numpy_iterator()] == [v.encode(t) for t in HF_TEXTS]
  batched = v.encode_tf(tf.constant(HF_TEXTS))
  assert isinstance(batched, tf.RaggedTensor) and batched.to_list() == [v.encode(t)
                                                                        for t in HF_TEXTS]
  grid = v.encode_tf(tf.constant([HF_TEXTS[:2], HF_TEXTS[2:4]]))
  assert grid.to_list() == [[v.encode(t) for t in HF_TEXTS[:2]],
                            [v.encode(t) for t in HF_TEXTS[2:4]]]
  rows = [v.encode(t) + [v.eos_id] + v.encode(" cat") for t in HF_TEXTS[:4]]
  width = max(map(len, rows))
  dense = np.array([r + [0] * (width - len(r)) for r in rows], np.int32)
  assert [t.decode() for t in v.decode_tf(tf.constant(dense)).numpy()] == HF_TEXTS[:4]
  assert v.decode_tf(tf.constant(dense[0])).numpy().decode() == HF_TEXTS[0]
  # Inside a tf.data map, as seqio's tokenize / detokenize run it.
  rt = tf.data.Dataset.from_tensor_slices(HF_TEXTS).map(
      lambda s: v.decode_tf(tf.concat([v.encode_tf(s), [v.eos_id]], 0)))
  assert [t.decode() for t in rt.as_numpy_iterator()] == HF_TEXTS


def test_hf_vocabulary_in_a_seqio_task(hf_dir):
  """seqio's own tokenize + append_eos preprocessors over the HF vocabulary."""
  import tensorflow as tf
  v = vocab.get_vocabulary(hf_dir)
  texts = HF_TEXTS[:6]
  name = "test_vocab_hf_task"
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(
          lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices({"text": texts}),
          splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features={"text": seqio.Feature(v, add_eos=True)})
  got = list(seqio.get_mixture_or_task(name).get_dataset(
      {"text": 64}, split="train", shuffle=False).as_numpy_iterator())
  assert [ex["text"].tolist() for ex in got] == [v.encode(t) + [v.eos_id] for t in texts]
  assert [v.decode(ex["text"]) for ex in got] == texts
  seqio.TaskRegistry.remove(name)


def test_get_vocabulary_dispatches_on_a_file_or_a_directory(hf_dir, tmp_path):
  by_dir = vocab.get_vocabulary(hf_dir)
  by_file = vocab.get_vocabulary(os.path.join(hf_dir, "tokenizer.json"))
  assert by_dir is by_file  # cached by the file's absolute path
  assert by_dir.tokenizer_file == os.path.join(os.path.abspath(hf_dir), "tokenizer.json")
  assert by_dir.tokenizer_config_file == os.path.join(os.path.abspath(hf_dir),
                                                      "tokenizer_config.json")
  # Equality is the tokenizer's content (and EOS, template), wherever it lies; picklable.
  moved = vocab.HFTokenizerVocabulary(os.path.join(_copy_tokenizer(hf_dir, tmp_path / "m"),
                                                   "tokenizer.json"))
  assert moved == by_dir and hash(moved) == hash(by_dir) and moved is not by_dir
  again = pickle.loads(pickle.dumps(by_dir))
  assert again == by_dir and again.encode("owl cat") == by_dir.encode("owl cat")
  other_eos = _copy_tokenizer(hf_dir, tmp_path / "eos")
  _hf_config(other_eos, eos_token="<|im_end|>")
  assert vocab.get_vocabulary(other_eos) != by_dir
  assert vocab.get_vocabulary(other_eos).eos_id == by_dir.encode("<|im_end|>")[0]
  # SentencePiece and bytes as before.
  assert isinstance(vocab.get_vocabulary(vocab.synthetic_words_model()),
                    seqio.SentencePieceVocabulary)
  assert isinstance(vocab.get_vocabulary(None), seqio.ByteVocabulary)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match=rf"spm_path='{empty}' is a directory without a "
                                       r"tokenizer\.json"):
    vocab.get_vocabulary(str(empty))
  with pytest.raises(ValueError, match=r"HF tokenizer file not found: '.*nowhere/tokenizer"):
    vocab.get_vocabulary(str(tmp_path / "nowhere" / "tokenizer.json"))
  with pytest.raises(ValueError, match=r"extra_ids=100 with the HF tokenizer spm_path="):
    vocab.get_vocabulary(hf_dir, extra_ids=100)


def test_hf_eos_comes_from_the_config_or_the_argument(hf_dir, tmp_path):
  tok_file = lambda d: os.path.join(d, "tokenizer.json")
  bare = _copy_tokenizer(hf_dir, tmp_path / "bare", config=False)
  with pytest.raises(ValueError, match=r"HF tokenizer '.*bare/tokenizer\.json': no EOS token "
                                       r"\(there is no tokenizer_config\.json beside it\)"):
    vocab.HFTokenizerVocabulary(tok_file(bare))
  v = vocab.HFTokenizerVocabulary(tok_file(bare), eos_token="<|im_end|>")
  assert v.tokenizer_config_file is None and v.chat_template is None
  assert v.eos_id == v.encode("<|im_end|>")[0]
  no_eos = _copy_tokenizer(hf_dir, tmp_path / "no_eos")
  _hf_config(no_eos, eos_token=_DROP)
  with pytest.raises(ValueError, match=r"no EOS token \(.*no_eos/tokenizer_config\.json has no "
                                       r"eos_token\)"):
    vocab.HFTokenizerVocabulary(tok_file(no_eos))
  as_dict = _copy_tokenizer(hf_dir, tmp_path / "dict")
  _hf_config(as_dict, eos_token={"__type": "AddedToken", "content": "<|im_end|>",
                                 "special": True})
  assert vocab.HFTokenizerVocabulary(tok_file(as_dict)).eos_id == v.eos_id
  with pytest.raises(ValueError, match=r"eos_token='<\|endoftext\|>' differs from the eos_token "
                                       r"'<\|im_end\|>' of .*dict/tokenizer_config\.json"):
    vocab.HFTokenizerVocabulary(tok_file(as_dict), eos_token="<|endoftext|>")
  unknown = _copy_tokenizer(hf_dir, tmp_path / "unknown")
  _hf_config(unknown, eos_token="</s>")
  with pytest.raises(ValueError, match=r"its eos_token '</s>' \(from .*unknown/tokenizer_config"
                                       r"\.json\) is not a token of the vocabulary"):
    vocab.HFTokenizerVocabulary(tok_file(unknown))
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "tokenizer.json").write_text("{}")
  with pytest.raises(ValueError, match=r"broken/tokenizer\.json: cannot read as a HF "
                                       r"tokenizer\.json"):
    vocab.HFTokenizerVocabulary(str(broken / "tokenizer.json"))


def _jinja(template, **variables):
  """What transformers renders: its sandboxed environment, trim_blocks and lstrip_blocks."""
  import jinja2.sandbox
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  return env.from_string(template).render(**variables)


def test_hf_chat_template_renders_as_jinja_does(hf_dir, tmp_path):
  v = vocab.get_vocabulary(hf_dir)
  msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "owl cat?"},
          {"role": "assistant", "content": "dog"}, {"role": "user", "content": "hen?"}]
  assert v.chat_template == helpers.HF_CHAT_TEMPLATE
  for gen in (True, False):
    want = _jinja(helpers.HF_CHAT_TEMPLATE, messages=msgs, add_generation_prompt=gen,
                  eos_token="<|endoftext|>")
    assert v.apply_chat_template(msgs, add_generation_prompt=gen) == want
  assert v.apply_chat_template(msgs[1:2]) == "<|im_start|>user\nowl cat?<|im_end|>\n" \
                                             "<|im_start|>assistant\n"
  # A template with indented blocks (trim_blocks, lstrip_blocks), the special tokens and
  # raise_exception (Llama / Mistral style).
  strict = ("{{ bos_token }}{% for m in messages %}\n"
            "  {% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
            "    {{ raise_exception('Conversation roles must alternate user/assistant') }}\n"
            "  {% endif %}\n"
            "[{{ m['role'] }}] {{ m['content'] | trim }}{{ eos_token }}\n"
            "{% endfor %}")
  d = _copy_tokenizer(hf_dir, tmp_path / "strict")
  _hf_config(d, chat_template=strict, bos_token="<|im_start|>")
  s = vocab.get_vocabulary(d)
  assert s.bos_id == s.encode("<|im_start|>")[0]
  good = [{"role": "user", "content": " owl "}, {"role": "assistant", "content": "cat"}]
  assert s.apply_chat_template(good) == _jinja(
      strict, messages=good, add_generation_prompt=True, bos_token="<|im_start|>",
      eos_token="<|endoftext|>") == ("<|im_start|>[user] owl<|endoftext|>\n"
                                     "[assistant] cat<|endoftext|>\n")
  with pytest.raises(vocab.ChatTemplateError, match=r"chat template of .*strict/tokenizer_config"
                                                    r"\.json: Conversation roles must alternate"):
    s.apply_chat_template(good[::-1])
  # chat_template.jinja beside it (newer HF saves), when the config has none.
  j = _copy_tokenizer(hf_dir, tmp_path / "jinja")
  _hf_config(j, chat_template=_DROP)
  (tmp_path / "jinja" / "chat_template.jinja").write_text(strict)
  assert vocab.get_vocabulary(j).chat_template == strict
  none = _copy_tokenizer(hf_dir, tmp_path / "none")
  _hf_config(none, chat_template=_DROP)
  with pytest.raises(ValueError, match=r"HF tokenizer '.*none/tokenizer\.json' has no chat "
                                       r"template \(.*none/tokenizer_config\.json has no "
                                       r"chat_template\)"):
    vocab.get_vocabulary(none).apply_chat_template(good)
