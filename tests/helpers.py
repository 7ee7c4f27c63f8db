"""Shared test pieces: the tiny network config, self-describing checkpoints, small meshes."""

import os

import jax
import numpy as np
import seqio
import tensorflow as tf

from rso_jax import checkpoints, cli, models, network, partitioning, train, trainer
from rso_jax.tasks import synthetic

CFG = network.T5Config(vocab_size=384, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                       num_encoder_layers=1, num_decoder_layers=1)
BYTES = {"type": "bytes"}


# Every stage of an own-data experiment at a few steps (the network is the pretrained
# checkpoint's); the caller adds TASK_FEATURE_LENGTHS.
TINY_EXPERIMENT = [
    "--gin.SFT_STEPS=4", "--gin.REWARD_STEPS=4", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
    "--gin.NUM_PROMPTS=None", "--gin.EVAL_PROMPTS=6",
    "--gin.sample.sample_configured.num_candidates=4",
    "--gin.sample.sample_configured.num_samples=4",
    "--gin.sample.sample_configured.batch_prompts=8",
    "--gin.sample.sample_configured.prompts_per_shard=16",
    # A random T5 rarely emits EOS: keep unfinished candidates (read whole by the reward
    # model, whose response length is the policy's plus EOS).
    "--gin.sample.sample_configured.keep_unfinished=True"]


def manifest(kind, lengths, config=CFG, vocabulary=None, settings=None, task=None,
             source="test"):
  return checkpoints.Manifest(kind=kind, network=config, vocabulary=vocabulary or BYTES,
                              feature_lengths=dict(lengths) if lengths else None,
                              model_settings=settings or {}, task=task, source=source)


def init_params(model, lengths, seed=0):
  """Unboxed initial params (jitted init: several times faster than eager on CPU)."""
  init = jax.jit(lambda k: model.get_initial_variables(k, model.input_shapes(2, lengths)))
  return jax.device_get(trainer.unbox(init(jax.random.key(seed))["params"]))


def zero_params(model, lengths):
  """All-zero params of `model` from shapes only (no initializer compiled): for tests of code
  that reads no params, e.g. tokenization."""
  shapes = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.key(0), model.input_shapes(2, lengths)))["params"]
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), trainer.unbox(shapes))


def tokens(texts, length, vocab=None):
  """`[M, length]` int32: each text's ids (cut to length − 1) + EOS, 0-padded."""
  import seqio  # pylint: disable=g-import-not-at-top
  vocab = vocab or seqio.ByteVocabulary()
  out = np.zeros((len(texts), length), np.int32)
  for i, t in enumerate(texts):
    ids = list(vocab.encode(t))[:length - 1] + [1]
    out[i, :len(ids)] = ids
  return out


def save(path, model, lengths, params=None, seed=0, vocabulary=None, kind=None):
  """A params checkpoint of `model` with its manifest; returns the path."""
  params = init_params(model, lengths, seed) if params is None else params
  m = manifest(kind or model.manifest_kind, lengths, model.config, vocabulary,
               model.manifest_settings())
  checkpoints.save_params(str(path), params, m)
  return str(path)


def xla_flags(devices):
  """This session's XLA_FLAGS with `devices` host devices: for a child process."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])


def one_device_mesh():
  return partitioning.create_mesh((1, 1, 1), devices=jax.devices()[:1])


def losses_on_meshes(model, batches, lengths, batch_size, optimizer):
  """{mesh shape: [loss of each step]} of `model` trained on `batches` from the same initial
  state on one device (1, 1, 1) and on the 8 devices as (2, 2, 2)."""
  out = {}
  for shape, devs in (((1, 1, 1), jax.devices()[:1]), ((2, 2, 2), None)):
    mesh = partitioning.create_mesh(shape, devices=devs)
    tr = trainer.Trainer(model, optimizer, mesh, batch_size=batch_size, feature_lengths=lengths,
                         seed=0)
    state, run = tr.init_state(), []
    for b in batches:
      state, m = tr.train_step(state, b)
      run.append(float(m["loss"]))
    out[shape] = run
  return out


def train_spm(directory, texts, vocab_size=96):
  """A small SentencePiece model trained on `texts`; returns its path."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  prefix = os.path.join(str(directory), "spm")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(texts)), model_prefix=prefix, vocab_size=vocab_size,
      model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      hard_vocab_limit=False,
      minloglevel=2)
  return prefix + ".model"


WORDS = ("owl cat ram dog eel ewe yak fox bee ant elk emu gnu hen jay koi").split()


def word_texts(n, lo=3, hi=12, seed=0):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, rng.integers(lo, hi))) for _ in range(n)]


def seq2seq_batch(inputs, targets):
  """A seq2seq batch from `[B, Li]` input and `[B, Lt]` target tokens (EOS included)."""
  targets = np.asarray(targets, np.int32)
  dec = np.concatenate([np.zeros((len(targets), 1), np.int32), targets[:, :-1]], 1)
  return {"encoder_input_tokens": np.asarray(inputs, np.int32),
          "decoder_target_tokens": targets, "decoder_input_tokens": dec,
          "decoder_loss_weights": (targets > 0).astype(np.float32)}


def fit(model, batch, params, steps, learning_rate):
  """`steps` Adam steps of `model.loss_fn` on one fixed batch (tests that need a model that
  has learned something specific); returns the params."""
  import optax  # pylint: disable=g-import-not-at-top
  opt = optax.adam(learning_rate)
  state = opt.init(params)

  @jax.jit
  def step(p, s):
    g = jax.grad(lambda q: model.loss_fn(q, batch, None)[0])(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  for _ in range(steps):
    params, state = step(params, state)
  return params


def hf_batch(seed, vocab_size):
  """Random tokens with end padding (id 0): encoder [4, 11], decoder inputs and targets [4, 9]."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab_size, (4, 11))
  for row, n in enumerate((11, 7, 3, 9)):
    enc[row, n:] = 0
  tgt = rng.randint(2, vocab_size, (4, 9))
  for row, n in enumerate((9, 4, 6, 1)):
    tgt[row, n:] = 0
  dec = np.concatenate([np.zeros((4, 1), tgt.dtype), tgt[:, :-1]], axis=1)  # shift right, BOS=0
  return enc, dec, tgt


def assert_logits_match_hf(hf_model, config, params, enc, dec, tgt, tol=1e-4):
  """Our T5 and a transformers T5 agree within `tol`: encoder outputs at every position, logits
  at every real target with decoder padding given, and every position with the causal mask
  only. Non-vacuous: the logits are not all near zero."""
  import torch  # pylint: disable=g-import-not-at-top
  from rso_jax import network  # pylint: disable=g-import-not-at-top
  t = torch.tensor
  with torch.no_grad():
    hf_enc = hf_model.encoder(input_ids=t(enc),
                              attention_mask=t(enc > 0)).last_hidden_state.numpy()
    hf_masked = hf_model(input_ids=t(enc), attention_mask=t(enc > 0), decoder_input_ids=t(dec),
                         decoder_attention_mask=t(tgt > 0)).logits.numpy()
    hf_causal = hf_model(input_ids=t(enc), attention_mask=t(enc > 0),
                         decoder_input_ids=t(dec)).logits.numpy()
  net = network.Transformer(config)
  variables = {"params": params}
  ours_enc = net.apply(variables, enc, method=network.Transformer.encode)
  np.testing.assert_allclose(np.asarray(ours_enc), hf_enc, atol=tol, rtol=0)
  ours_masked = np.asarray(net.apply(variables, enc, dec, tgt, enable_dropout=False))
  valid = tgt > 0
  np.testing.assert_allclose(ours_masked[valid], hf_masked[valid], atol=tol, rtol=0)
  ours_causal = np.asarray(net.apply(variables, enc, dec, None, enable_dropout=False))
  np.testing.assert_allclose(ours_causal, hf_causal, atol=tol, rtol=0)
  assert np.abs(hf_causal).max() > 1.0  # the comparison is not vacuous


def snapshot(root):
  """{relative path: (bytes, mtime_ns)} of every file under `root` (directories by name)."""
  out = {}
  for top, dirs, files in os.walk(str(root)):
    for d in dirs:
      out[os.path.relpath(os.path.join(top, d), str(root)) + "/"] = None
    for f in files:
      p = os.path.join(top, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, str(root))] = (fh.read(), os.stat(p).st_mtime_ns)
  return out


def one_line(err, *needles):
  """The one error line of a CLI's stderr (library noise dropped), holding every needle."""
  lines = [l for l in err.strip().splitlines() if not cli.is_noise(l)]
  assert len(lines) == 1, err
  for n in needles:
    assert n in lines[0], lines[0]
  return lines[0]


class GoldenScorer:
  """Stands in for a proxy reward model: P(y1 ≻ y2) = σ(20·(r*(x, y1) − r*(x, y2)))."""

  def reward(self, prompts, responses, baselines=None):
    r = synthetic.golden_rewards(prompts, responses)
    if baselines is not None:
      r = r - synthetic.golden_rewards(prompts, [[b] for b in baselines])
    return 20.0 * r

  def prefer(self, prompts, y1, y2):
    a = synthetic.golden_rewards(prompts, y1).astype(np.float64)
    b = synthetic.golden_rewards(prompts, y2).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-20.0 * (a - b)))


class LengthScorer:
  """A hackable proxy: prefers the longer text, P(y1 ≻ y2) = σ(len(y1) − len(y2))."""

  def reward(self, prompts, responses, baselines=None):
    return np.array([[float(len(y)) for y in row] for row in responses], np.float32)

  def prefer(self, prompts, y1, y2):
    d = np.array([len(a) - len(b) for a, b in zip(y1, y2)], np.float64)
    return 1.0 / (1.0 + np.exp(-d))


# ------------------------------------------------------------------------------ the reverse task
REVERSE_TASK = "test_trainer_reverse"
REVERSE_LENGTHS = {"inputs": 16, "targets": 16}
REVERSE_CFG = network.T5Config(vocab_size=384, emb_dim=64, num_heads=4, head_dim=16,
                               mlp_dim=128, num_encoder_layers=1, num_decoder_layers=1)


def _reverse_examples(split, shuffle_files, seed=0):
  del shuffle_files, seed
  rng = np.random.RandomState(0 if split == "train" else 1)
  letters = np.array(list("abcdefgh"))
  words = ["".join(rng.choice(letters, rng.randint(3, 8))) for _ in range(256)]
  return tf.data.Dataset.from_tensor_slices(
      {"inputs": ["rev: " + w for w in words], "targets": [w[::-1] for w in words]})


def register_reverse_task():
  """A byte-level seqio task: reverse a word (the trainer tests' task)."""
  if REVERSE_TASK in seqio.TaskRegistry.names():
    return
  vocab = seqio.ByteVocabulary()
  seqio.TaskRegistry.add(
      REVERSE_TASK,
      source=seqio.FunctionDataSource(_reverse_examples, splits=("train", "validation")),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features={"inputs": seqio.Feature(vocab, add_eos=True),
                       "targets": seqio.Feature(vocab, add_eos=True)})


def train_reverse(model_dir, steps, **kw):
  """`train.train` of a tiny Seq2Seq on the reverse task (keyword overrides in `kw`)."""
  register_reverse_task()
  args = dict(model=models.Seq2SeqModel(REVERSE_CFG), model_dir=str(model_dir),
              train_steps=steps, batch_size=16, mixture_or_task_name=REVERSE_TASK,
              task_feature_lengths=REVERSE_LENGTHS,
              optimizer="adamw", learning_rate=3e-3, log_period=1, checkpoint_period=1000,
              mesh_shape=(-1, 1, 1), async_checkpoint=False, print_fn=lambda s: None)
  args.update(kw)
  return train.train(**args)


def train_words_sft(path, steps=300):
  """A tiny π_sft of the embedded task in its word vocabulary, trained `steps` steps: its
  samples are lexicon words with EOS, like the real one's. Leaves the default tasks
  registered."""
  from rso_jax import tasks  # pylint: disable=g-import-not-at-top
  tasks.register_synthetic_tasks(spm_path=tasks.synthetic_words_model())
  try:
    train.train(model=models.Seq2SeqModel(CFG), model_dir=str(path), train_steps=steps,
                batch_size=32, mixture_or_task_name="synthetic_sft",
                task_feature_lengths={"inputs": 8, "targets": 8}, optimizer="adamw",
                learning_rate=3e-3, checkpoint_period=steps, log_period=steps,
                print_fn=lambda s: None)
  finally:
    tasks.register_synthetic_tasks()
  return str(path)


def shared_words_sft(tmp_path_factory, steps=300):
  """`train_words_sft` once per test session, shared by the xdist workers (their base temp
  directories have one parent, this session's): the first to finish renames its checkpoint
  into place."""
  base = tmp_path_factory.getbasetemp()
  session = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  shared = session / f"words_sft_{steps}"
  if not (shared / "COMPLETED").exists():
    mine = train_words_sft(tmp_path_factory.mktemp("words_sft") / "sft", steps)
    try:
      os.rename(mine, shared)
    except OSError:  # another worker's is there
      pass
  return str(shared)


# A ChatML template in Jinja, as Qwen2's tokenizer_config.json spells its own.
HF_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
HF_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def write_hf_tokenizer(directory, words, chat_template=True):
  """A tiny byte-level BPE `tokenizer.json` (GPT-2 / Qwen2 style, written with `tokenizers`) and
  its `tokenizer_config.json` in `directory`; returns the directory.

  Special tokens `<|endoftext|>` (HF id 0, the EOS), `<|im_start|>`, `<|im_end|>`; then the
  256 byte symbols, so any text round-trips; then merges making each of the lowercase `words`
  and the letters "A" and "B" one token, alone and after a space ("owl", "Ġowl"). Deterministic.
  `chat_template`: True for `HF_CHAT_TEMPLATE` (ChatML), a Jinja string, or False for none.
  """
  import json  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  os.makedirs(str(directory), exist_ok=True)
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  units = sorted(set(words) | {"A", "B"})
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=100_000, min_frequency=0, show_progress=False,
      special_tokens=list(HF_SPECIAL_TOKENS),
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(units + [" " + w for w in units], trainer)
  tok.save(os.path.join(str(directory), "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": HF_SPECIAL_TOKENS[0],
            "pad_token": HF_SPECIAL_TOKENS[0], "bos_token": None, "unk_token": None,
            "model_max_length": 4096}
  if chat_template:
    config["chat_template"] = HF_CHAT_TEMPLATE if chat_template is True else chat_template
  with open(os.path.join(str(directory), "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)
  return str(directory)


def sample_records(samples_dir):
  """The sampling stage's pair records in `samples_dir` (its TFRecord shards), as dicts of
  NumPy values."""
  import glob  # pylint: disable=g-import-not-at-top
  from rso_jax.tasks import generated  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(samples_dir, generated.SHARD_PATTERN)))
  ds = tf.data.TFRecordDataset(files).map(
      lambda x: tf.io.parse_single_example(x, generated.feature_description()))
  out = []
  for ex in ds.as_numpy_iterator():
    out.append({k: (tf.sparse.to_dense(v).numpy() if isinstance(v, tf.sparse.SparseTensor)
                    else v) for k, v in ex.items()})
  return out
