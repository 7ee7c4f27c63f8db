"""RSO's sampling stage per prompt: rso_jax vs a HuggingFace/TRL-style peer, same weights.

    python benchmarks/sampling_stage.py [--sizes tiny,small] [--settings embedded,tldr]
                                        [--prompts 2] [--num_decodes 64] [--num_samples 8]
                                        [--beta 0.5] [--rm_rows 256] [--repeats R] [--threads 1]
                                        [--rm_arch encoder|encoder_decoder]
    # the figures of benchmarks/README.md (T5 v1.1 small, both length settings):
    python benchmarks/sampling_stage.py --sizes small --settings embedded --repeats 2
    python benchmarks/sampling_stage.py --sizes small --settings tldr --repeats 2
    # on a GPU (benchmarks/gpu.sh): both sides on the first GPU, weights and activations bf16
    python benchmarks/sampling_stage.py --platform gpu --dtype bfloat16 --sizes base,large

What is compared: the whole per-prompt work of the sampling stage (`rso_jax/sample.py`,
`process_batch`), for B prompts per call (`--prompts`, default 2):
  1. decode: N = 64 candidates per prompt from the SFT policy (T = 0.7, top-k 40);
  2. score: a Bradley-Terry reward model r(x, y) on the B * N candidates (`--rm_arch`:
     "encoder" reads "x [RESPONSE] y" with the T5 encoder, "encoder_decoder" reads x with the
     encoder and y with the decoder, `reward_models.BTRewardNetwork`);
  3. reject + pair: statistical rejection sampling (paper Algorithm 1, beta = 0.5, k = 8 of 64
     kept) and first-round-rank pairing of the kept candidates (a random order of the kept
     slots, then slots (0, 1), (2, 3), ... paired and labeled by reward: 4 pairs per prompt);
  4. ref log-probs: log pi_sft of the chosen and rejected response of every pair;
  5. records: the per-pair records the stage writes (prompt / chosen / rejected tokens, both
     log-probs, both rewards). Building them is timed; the TFRecord serialization of a shard
     (amortized over `prompts_per_shard` prompts) is not.

  rso_jax side, at token level with the functions `process_batch` calls (the stage works on
  texts through `inference.Generator` / `inference.RewardModel`; the benchmark's random
  checkpoints have no SentencePiece vocabulary, so the host-side text steps of those classes,
  detokenize / canonical re-encode / tokenize for the reward model, are NOT timed here):
    decode   `decoding.sample` under the mesh context on the sharded prompt batch, then
             `partitioning.to_host` (what `Generator.generate` runs per chunk);
    score    `reward_models.bt_rewards_jit` (the jitted pack "x [RESPONSE] y" + encoder + mean
             pooling + head that `RewardModel.reward` runs), over the B * N rows in chunks of
             `--rm_rows` rows, the last chunk zero-padded (`inference.map_rows`, as the
             reward model does); with "encoder_decoder", `bt_rewards_jit` on each prompt's
             tokens once and its N candidates as decoder rows, `--rm_rows` / N prompts per call
             (`inference.map_prompts`, as `RewardModel.reward` does for that model);
             default 256 = the reward-model batch `sample.run` loads the scorer with (at
             B = 2, N = 64 half of that chunk is padding; at the stage's default
             batch_prompts = 16 every chunk is full: pass `--rm_rows 128` to see B = 2 without
             the padding);
    reject   `rejection.select("rso", ...)` (mode "paper") + `pairs.make_pairs("first_round",
             ..., rewards=..., key=...)`, both fetched to the host, as in `process_batch`;
    ref      nothing to compute: the stage writes the untempered log pi_sft that the sampler
             returns with every candidate (`SampleOutput.model_logps`, equal to a teacher-forced
             score of the same tokens), so the reference log-probs are a gather. This is the
             rso_jax design and a legitimate saving over a second forward pass.
  Peer side, as a HuggingFace TRL user would write it:
    decode   `T5ForConditionalGeneration.generate(do_sample=True, num_return_sequences=N,
             top_k=40, temperature=0.7)`;
    score    `transformers.T5EncoderModel` (the encoder of the same HF checkpoint) on the same
             concatenation (prompt without its EOS + separator tokens + response, right-padded),
             masked mean pooling and the same linear head, one forward over the B * N rows;
             with "encoder_decoder", `transformers.T5Model` on B * N (x, y) rows (the prompt
             repeated per response, decoder inputs = y shifted right), the decoder's last state
             at the response's end @ the same head;
    reject   Algorithm 1 in plain Python (`benchmarks/algorithm1.py`, jax-free),
             per prompt, then `random.shuffle` of the kept indices and pairing in Python;
    ref      a teacher-forced forward of the reference model (the same HF policy) on the
             2 * 4 paired responses per prompt, summed token log-probs.

How: for each size a randomly initialized HF `T5ForConditionalGeneration` (T5 v1.1 layout; as
`benchmarks/decoding.py`: "tiny" and "small") is saved and converted with `convert.from_hf`;
the reward model is that checkpoint's encoder (shared embedding + encoder stack; with
"encoder_decoder" also its decoder, without the logits projection) plus a random scalar head
`[E, 1]` given to both sides, so both run the same weights. The separator is
`reward_models.BT_SEPARATOR` in the default byte vocabulary (id = byte + 3). Settings:
"embedded" prompt 32 / response 32 tokens (the embedded task), "tldr" prompt 256 / response 64
(TL;DR-like). EOS is disabled on both sides (HF: `min_new_tokens = max_new_tokens`; rso_jax:
`eos_id=None`) so both generate B * N * L tokens and score full-length responses. Each side runs
in its own child process pinned to the same cores with the same thread budget (`--threads`,
default 1; XLA_FLAGS `--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`); the
time of one whole stage call is the best of `--repeats` after a warm-up call (for rso_jax the
warm-up includes XLA compilation, reported separately), and the printed split is that best
call's, in wall time and in process CPU time (`time.process_time`, all threads of the child: on a
shared machine other jobs disturb it far less than wall time). Time per prompt = call time / B.

Checks: HF's reward model on the tokens rso_jax sampled gives rso_jax's rewards within 1e-3
(asserted in float32; in bfloat16 the difference is printed: two bf16 implementations differ by
rounding); the largest |log pi_jax - log pi_hf| of the paired responses (rso_jax's
`model_logps` vs HF's teacher-forced forward) is printed.

GPU (`--platform gpu`, with `--dtype bfloat16` as `gpu.sh` runs it): both children see the first
GPU (JAX_PLATFORMS=cuda; torch on "cuda"), no core pinning or thread limits; rso_jax's config
dtype and its weights (policy and reward model) in bfloat16, HF's models `.to(cuda, bfloat16)`.
Phase boundaries are taken after each phase's results are on the host (rso_jax fetches them
itself; the torch side synchronizes before every boundary), so the split is device time plus
transfers. Sizes: any of `decoding.SIZES` (base, large on a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from algorithm1 import reference as algorithm1  # pylint: disable=g-import-not-at-top,wrong-import-position
from decoding import SIZES, cpu_description, make_hf_checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position

SETTINGS = {"embedded": (32, 32), "tldr": (256, 64)}  # name: (prompt tokens, response tokens)
SEPARATOR = " [RESPONSE] "  # reward_models.BT_SEPARATOR (asserted in the rso_jax child)
PHASES = ("decode", "score", "reject+pair", "ref logps", "records")
EOS = 1


def _separator_ids():
  return [b + 3 for b in SEPARATOR.encode("utf-8")]  # seqio.ByteVocabulary: id = byte + 3


def _prompts(batch: int, length: int, vocab: int):
  """`[B, Li]` prompt tokens ending with EOS, as the stage tokenizes them (rows 1.. half full)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  tokens = rng.randint(3, vocab, (batch, length)).astype(np.int32)
  for i in range(batch):
    n = length if i == 0 else length // 2
    tokens[i, n - 1] = EOS
    tokens[i, n:] = 0
  return tokens


def _strip(row):
  """Token row up to and including EOS (padding removed): `sample._strip`."""
  ids = [int(t) for t in row]
  if EOS in ids:
    return ids[:ids.index(EOS) + 1]
  return [t for t in ids if t > 0]


def _now():
  """(wall, process CPU) seconds: a phase boundary."""
  return time.perf_counter(), time.process_time()


def _splits(t):
  """[(wall, cpu)] at the phase boundaries -> ([wall s per phase], [process CPU s per phase])."""
  return ([t[i + 1][0] - t[i][0] for i in range(len(PHASES))],
          [t[i + 1][1] - t[i][1] for i in range(len(PHASES))])


def _time_stage(stage, arg, repeats: int):
  """A warm-up call `stage(arg(0))`, then `repeats` timed calls `stage(arg(r + 1))`, each
  returning (its split, its result): (first call s, the fastest call's split, [process CPU s
  per timed call], the last call's result)."""
  t0 = time.perf_counter()
  stage(arg(0))
  first = time.perf_counter() - t0
  best, cpu, res = None, [], None
  for r in range(repeats):
    c0 = time.process_time()
    split, res = stage(arg(r + 1))
    cpu.append(time.process_time() - c0)
    if best is None or sum(split[0]) < sum(best[0]):
      best = split
  return first, best, cpu, res


def _records(enc, tokens, rewards, ref_c, ref_r, chosen, rejected, valid):
  """The stage's per-pair records (token fields; no texts at token level)."""
  out = []
  for i in range(chosen.shape[0]):
    for j in range(chosen.shape[1]):
      if not valid[i, j]:
        continue
      c, r = int(chosen[i, j]), int(rejected[i, j])
      out.append({"inputs": _strip(enc[i]), "chosen": _strip(tokens[i, c]),
                  "rejected": _strip(tokens[i, r]),
                  "ref_chosen_logps": float(ref_c[i, j]), "ref_rejected_logps": float(ref_r[i, j]),
                  "chosen_reward": float(rewards[i, c]), "rejected_reward": float(rewards[i, r])})
  return out


# ----------------------------------------------------------------------------------- rso_jax
def _jax_reward_model(config, params, head, rm_arch: str, li: int, length: int):
  """The BT reward model on the policy's weights, (BTRewardNetwork, its params): the encoder
  (and for "encoder_decoder" the decoder without its logits projection) plus `head`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rso_jax import reward_models  # pylint: disable=g-import-not-at-top
  seq2seq_rm = rm_arch == "encoder_decoder"
  rm_module = reward_models.BTRewardNetwork(config, "last" if seq2seq_rm else "mean", rm_arch)
  rm_params = {"token_embedder": params["token_embedder"], "encoder": params["encoder"],
               "reward_head": {"kernel": head}}
  if seq2seq_rm:  # the policy's decoder without its logits projection
    rm_params["decoder"] = {k: v for k, v in params["decoder"].items() if k != "logits_dense"}
  sep_len = len(_separator_ids())
  if seq2seq_rm:
    shapes = jax.eval_shape(lambda: rm_module.init(
        jax.random.key(0), jnp.ones((1, li), jnp.int32), jnp.ones((1, length), jnp.int32),
        method=reward_models.BTRewardNetwork.score_responses))["params"]
  else:
    shapes = jax.eval_shape(lambda: rm_module.init(jax.random.key(0), jnp.ones(
        (1, li + sep_len + length), jnp.int32)))["params"]
  shapes = jax.tree.map(lambda x: x.shape, nn_unbox(shapes))
  assert jax.tree.map(np.shape, rm_params) == shapes, "RM params do not fit BTRewardNetwork"
  return rm_module, rm_params


class _JaxStage:
  """rso_jax's side: one stage call with the functions `process_batch` calls, at token level;
  called with a PRNG key, it returns (its split, (samples, rewards, selection, pairs, records))."""

  def __init__(self, a: dict):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from rso_jax import convert, network, partitioning, reward_models  # pylint: disable=g-import-not-at-top
    assert reward_models.BT_SEPARATOR == SEPARATOR, reward_models.BT_SEPARATOR
    config, params = convert.from_hf(a["hf_dir"])
    head = np.load(a["head"])
    if a["dtype"] != "float32":  # weights and activations in bfloat16 (accelerators)
      config = dataclasses.replace(config, dtype=a["dtype"], param_dtype=a["dtype"])
      params = jax.tree.map(lambda x: x.astype(a["dtype"]), params)
      head = head.astype(a["dtype"])
    self.module = network.Transformer(config)
    rm_module, rm_params = _jax_reward_model(config, params, head, a["rm_arch"], a["li"],
                                             a["length"])
    self.mesh = partitioning.create_mesh((-1, 1, 1))
    with partitioning.MeshRules(self.mesh):
      self.params = jax.device_put(params)
      self.rm_params = jax.device_put(rm_params)
    sep = tuple(_separator_ids())
    self.rm_fn = lambda p, x, y: reward_models.bt_rewards_jit(rm_module, p, x, y, separator=sep,
                                                              eos_id=EOS)
    self.a = a
    self.enc_np = _prompts(a["prompts"], a["li"], config.vocab_size)

  def _decode(self, key):
    """N samples per prompt on the sharded prompt batch, fetched to the host."""
    from rso_jax import decoding, partitioning  # pylint: disable=g-import-not-at-top
    with partitioning.MeshRules(self.mesh):
      enc = partitioning.shard_batch({"x": self.enc_np}, self.mesh)["x"]
      return partitioning.to_host(decoding.sample(
          self.module, self.params, enc, key, num_decodes=self.a["num_decodes"],
          max_decode_length=self.a["length"], temperature=0.7, top_k=40, top_p=None,
          eos_id=None))

  def _score(self, tokens):
    """`[B, N]` rewards of the candidates, in chunks of `rm_rows` rows as `RewardModel` runs."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    from rso_jax import inference  # pylint: disable=g-import-not-at-top
    b, n, rows = self.a["prompts"], self.a["num_decodes"], self.a["rm_rows"]
    if self.a["rm_arch"] == "encoder_decoder":  # each prompt once, its N responses as decoder rows
      return inference.map_prompts(self.rm_fn, self.rm_params, self.enc_np, tokens,
                                   max(rows // n, 1), self.mesh)
    x_rows = np.repeat(self.enc_np, n, axis=0)  # prompt-major, as RewardModel.reward flattens
    return inference.map_rows(self.rm_fn, self.rm_params,
                              [x_rows, tokens.reshape(b * n, self.a["length"])],
                              rows, self.mesh).reshape(b, n)

  def _reject_and_pair(self, rewards, k_select, k_pair):
    """Algorithm 1 (mode "paper") and first-round pairs, both fetched to the host."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from rso_jax import pairs as pairs_lib  # pylint: disable=g-import-not-at-top
    from rso_jax import rejection  # pylint: disable=g-import-not-at-top
    # EOS off: every candidate full-length, none invalid.
    valid = np.ones((self.a["prompts"], self.a["num_decodes"]), bool)
    masked = jnp.asarray(np.where(valid, rewards, 0.0))
    sel = jax.device_get(rejection.select("rso", k_select, masked, self.a["num_samples"],
                                          self.a["beta"], mask=jnp.asarray(valid), mode="paper"))
    pairs = jax.device_get(pairs_lib.make_pairs(
        "first_round", jnp.asarray(sel.indices), jnp.asarray(sel.valid), rewards=masked,
        key=k_pair))
    return sel, pairs

  def __call__(self, key):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    t = [_now()]
    k_sample, k_select, k_pair = jax.random.split(key, 3)
    out = self._decode(k_sample)
    t.append(_now())
    rewards = self._score(out.tokens)
    t.append(_now())
    sel, pairs = self._reject_and_pair(rewards, k_select, k_pair)
    t.append(_now())
    chosen, rejected = np.asarray(pairs.chosen), np.asarray(pairs.rejected)
    ref_c = np.take_along_axis(out.model_logps, chosen, 1)
    ref_r = np.take_along_axis(out.model_logps, rejected, 1)
    t.append(_now())
    recs = _records(self.enc_np, out.tokens, rewards, ref_c, ref_r, chosen, rejected,
                    pairs.valid)
    t.append(_now())
    return _splits(t), (out, rewards, sel, pairs, recs)


def run_jax(a) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  stage = _JaxStage(a)
  first, best, cpu, res = _time_stage(stage, jax.random.key, a["repeats"])
  out, rewards, sel, pairs, recs = res
  np.savez(a["jax_out"], tokens=out.tokens, rewards=rewards, model_logps=out.model_logps,
           chosen=np.asarray(pairs.chosen), rejected=np.asarray(pairs.rejected),
           valid=np.asarray(pairs.valid))
  return dict(split=best[0], cpu_split=best[1], cpu_s=min(cpu), first_call_s=first,
              pairs=len(recs), accepted=int(np.sum(sel.valid)), rounds=float(np.mean(sel.rounds)),
              rm_rows=a["rm_rows"])


def nn_unbox(tree):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.unbox(tree)


# --------------------------------------------------------------------------------- HF / TRL
def _python_pairs(rewards, k: int, beta: float, rng: random.Random):
  """Algorithm 1 in plain Python per prompt, a shuffle of the kept indices and first-round pairs
  labeled by reward: (chosen `[B, P]`, rejected `[B, P]`) candidate indices."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  chosen, rejected = [], []
  for row in rewards:
    kept = algorithm1(row.tolist(), k, beta, rng)
    rng.shuffle(kept)
    pc, pr = [], []
    for j in range(0, len(kept) - 1, 2):
      x, y = kept[j], kept[j + 1]
      better = row[x] > row[y]
      pc.append(x if better else y)
      pr.append(y if better else x)
    chosen.append(pc)
    rejected.append(pr)
  return np.array(chosen), np.array(rejected)


class _HFStage:
  """The peer: the stage as a HuggingFace TRL user writes it, on the same weights; called with
  a seed, it returns (its split, its records)."""

  def __init__(self, a: dict):
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    self.np, self.torch, self.a = np, torch, a
    self.gpu = a["platform"] == "gpu"
    self.device = torch.device("cuda" if self.gpu else "cpu")
    self.dtype = getattr(torch, a["dtype"])
    if not self.gpu:
      torch.set_num_threads(a["threads"])
    load = lambda cls: cls.from_pretrained(a["hf_dir"]).eval().to(self.device, self.dtype)
    self.policy = load(transformers.T5ForConditionalGeneration)
    self.seq2seq_rm = a["rm_arch"] == "encoder_decoder"
    self.rm = load(transformers.T5Model if self.seq2seq_rm else transformers.T5EncoderModel)
    self.head = torch.as_tensor(np.load(a["head"])).to(self.device, self.dtype)  # [E, 1]
    self.b, self.n, self.length = a["prompts"], a["num_decodes"], a["length"]
    self.enc_np = _prompts(self.b, a["li"], self.policy.config.vocab_size)
    self.enc = torch.as_tensor(self.enc_np, dtype=torch.long, device=self.device)
    self.mask = (self.enc > 0).long()
    prompt_ids = [[int(t) for t in row if t > 0] for row in self.enc_np]
    self.prompt_ids = [p[:-1] if p and p[-1] == EOS else p for p in prompt_ids]  # without EOS
    self.sep = _separator_ids()
    self.gen = dict(do_sample=True, num_return_sequences=self.n, top_k=40, temperature=0.7,
                    top_p=1.0, max_new_tokens=self.length, min_new_tokens=self.length)

  def _host(self, x):
    return x.float().cpu().numpy()  # syncs the device

  def _index(self, x):
    return self.torch.as_tensor(x.reshape(-1), device=self.device)

  def rewards(self, responses):
    """`[B * N, L]` response tokens -> `[B, N]` rewards (on the device)."""
    torch, b, n, device = self.torch, self.b, self.n, self.device
    if self.seq2seq_rm:  # one (x, y) row each: the prompt encoded again for every response
      rows = torch.arange(b, device=device).repeat_interleave(n)
      start = torch.zeros((b * n, 1), dtype=torch.long, device=device)
      dec = torch.cat([start, responses[:, :-1]], 1)
      h = self.rm(input_ids=self.enc[rows], attention_mask=self.mask[rows],
                  decoder_input_ids=dec).last_hidden_state
      last = (responses > 0).sum(1).clamp(min=1) - 1
      return (h[torch.arange(b * n, device=device), last] @ self.head)[:, 0].reshape(b, n)
    rows = [self.prompt_ids[i // n] + self.sep + [t for t in y if t > 0]
            for i, y in enumerate(responses.tolist())]
    width = max(len(r) for r in rows)
    packed = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long,
                          device=device)
    m = (packed > 0).to(self.dtype)
    h = self.rm(input_ids=packed, attention_mask=m.long()).last_hidden_state
    pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
    return (pooled @ self.head)[:, 0].reshape(b, n)

  def pair_logps(self, tokens, chosen, rejected):
    """Teacher-forced log pi of the paired responses (`tokens` `[B, N, L]`, `chosen` /
    `rejected` `[B, P]` indices): `[2 * B * P]`, every chosen one, then every rejected one."""
    torch = self.torch
    rows = torch.arange(self.b, device=self.device).repeat_interleave(chosen.shape[1])
    labels = torch.cat([tokens[rows, self._index(chosen)], tokens[rows, self._index(rejected)]])
    rows = torch.cat([rows, rows])
    logits = self.policy(input_ids=self.enc[rows], attention_mask=self.mask[rows],
                         labels=labels).logits
    logp = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]
    return self._host((logp * (labels > 0)).sum(-1))

  def __call__(self, seed):
    np, torch, b = self.np, self.torch, self.b
    torch.manual_seed(seed)
    rng = random.Random(seed)
    t = [_now()]
    out = self.policy.generate(input_ids=self.enc, attention_mask=self.mask, **self.gen)
    responses = out[:, 1:]  # drop the decoder start token
    if self.gpu:
      torch.cuda.synchronize()
    t.append(_now())
    rewards = self._host(self.rewards(responses))
    t.append(_now())
    chosen, rejected = _python_pairs(rewards, self.a["num_samples"], self.a["beta"], rng)
    t.append(_now())
    p = chosen.shape[1]
    resp = responses.reshape(b, self.n, -1)
    lp = self.pair_logps(resp, chosen, rejected)
    ref_c, ref_r = lp[:b * p].reshape(b, p), lp[b * p:].reshape(b, p)
    t.append(_now())
    recs = _records(self.enc_np, resp.cpu().numpy(), rewards, ref_c, ref_r, chosen, rejected,
                    np.ones_like(chosen, bool))
    t.append(_now())
    return _splits(t), recs

  def cross_check(self, saved) -> dict:
    """This side's rewards and log pi on what rso_jax sampled (`saved`), against rso_jax's."""
    np = self.np
    jax_tokens = self.torch.as_tensor(saved["tokens"].reshape(self.b * self.n, self.length),
                                      dtype=self.torch.long, device=self.device)
    r_hf = self._host(self.rewards(jax_tokens))
    ch, rj = saved["chosen"], saved["rejected"]
    lp_hf = self.pair_logps(jax_tokens.reshape(self.b, self.n, self.length), ch, rj)
    lp_jax = np.concatenate([np.take_along_axis(saved["model_logps"], ch, 1).reshape(-1),
                             np.take_along_axis(saved["model_logps"], rj, 1).reshape(-1)])
    return dict(max_abs_reward_diff=float(np.max(np.abs(r_hf - saved["rewards"]))),
                max_abs_ref_logp_diff=float(np.max(np.abs(lp_hf - lp_jax))),
                reward_std=float(np.std(saved["rewards"])))


def run_hf(a) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  stage = _HFStage(a)
  with torch.no_grad():
    first, best, cpu, recs = _time_stage(stage, lambda seed: seed, a["repeats"])
    # Cross-checks on what rso_jax sampled: rewards, and log pi of its paired responses.
    checks = stage.cross_check(np.load(a["jax_out"]))
  reward_diff = checks["max_abs_reward_diff"]
  if a["dtype"] == "float32":
    assert reward_diff <= 1e-3, f"rewards differ: max |r_jax - r_hf| = {reward_diff}"
  return dict(split=best[0], cpu_split=best[1], cpu_s=min(cpu), first_call_s=first,
              pairs=len(recs), **checks)


# ----------------------------------------------------------------------------------- driver
def _child(side: str, a: dict) -> dict:
  cfg = os.path.join(a["tmp"], f"{side}.json")
  with open(cfg, "w") as f:
    json.dump(a, f)
  cmd = [sys.executable, os.path.abspath(__file__), f"--child={side}", f"--child_config={cfg}"]
  env = dict(os.environ)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if a["platform"] == "cpu":
    threads = a["threads"]
    env["XLA_FLAGS"] = (f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                        f"intra_op_parallelism_threads={threads}")
    env["OMP_NUM_THREADS"] = str(threads)
  env["JAX_PLATFORMS"] = "cpu" if a["platform"] == "cpu" else "cuda"
  res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if res.returncode:
    raise RuntimeError(f"{side} child failed:\n{res.stderr[-4000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def _print_side(name: str, res: dict, b: int) -> None:
  total = sum(res["split"])
  parts = ", ".join(f"{ph} {1e3 * s / b:.1f} ms ({100 * s / total:.0f}%) / {1e3 * c / b:.1f}"
                    for ph, s, c in zip(PHASES, res["split"], res["cpu_split"]))
  print(f"  {name:8s}: {1e3 * total / b:9.1f} ms/prompt wall ({total:.3f} s/call), "
        f"{1e3 * res['cpu_s'] / b:9.1f} ms/prompt process CPU; first call "
        f"{res['first_call_s']:.1f} s; {res['pairs']} pairs/call")
  print(f"            per prompt, wall (share) / process CPU ms: {parts}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="tiny,small")
  parser.add_argument("--settings", default="embedded,tldr",
                      help="embedded = prompt 32 / response 32 tokens, tldr = 256 / 64")
  parser.add_argument("--prompts", type=int, default=2, help="B prompts per stage call")
  parser.add_argument("--num_decodes", type=int, default=64, help="N candidates per prompt")
  parser.add_argument("--num_samples", type=int, default=8, help="k kept by Algorithm 1")
  parser.add_argument("--beta", type=float, default=0.5)
  parser.add_argument("--rm_arch", choices=("encoder", "encoder_decoder"), default="encoder",
                      help="the BT reward model's architecture (reward_models.ARCHITECTURES)")
  parser.add_argument("--rm_rows", type=int, default=256,
                      help="rso_jax reward-model chunk rows (sample.run's scorer batch_size)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls after the warm-up (default: 5 for tiny, 2 otherwise)")
  parser.add_argument("--threads", type=int, default=1,
                      help="CPU threads for both frameworks (torch.set_num_threads and XLA's "
                           "intra-op pool); 1 is the reproducible setting on a shared machine")
  parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                      help="gpu: both frameworks on the first GPU (JAX_PLATFORMS=cuda, torch cuda)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="weights and activations of both frameworks")
  parser.add_argument("--child", choices=("jax", "hf"), default=None)
  parser.add_argument("--child_config", default=None)
  args = parser.parse_args()
  if args.child:
    with open(args.child_config) as f:
      a = json.load(f)
    if a["platform"] == "cpu":
      allowed = sorted(os.sched_getaffinity(0))
      os.sched_setaffinity(0, set(allowed[:max(1, a["threads"])]))
    print(json.dumps(run_jax(a) if args.child == "jax" else run_hf(a)))
    return

  import numpy as np  # pylint: disable=g-import-not-at-top
  b = args.prompts
  print(f"sampling stage per call: B={b} prompts x N={args.num_decodes} candidates, T=0.7, "
        f"top-k 40, EOS off; BT reward model ({args.rm_arch}, the policy's T5 weights); "
        f"Algorithm 1 beta={args.beta}, "
        f"k={args.num_samples}; first-round pairs; {args.dtype}; "
        + (f"{cpu_description()}, {args.threads} thread(s) per framework"
           if args.platform == "cpu" else "GPU"))
  for size in args.sizes.split(","):
    if size not in SIZES:
      raise ValueError(f"--sizes: unknown size {size!r}; choose from {sorted(SIZES)}")
    with tempfile.TemporaryDirectory() as tmp:
      hf_dir = os.path.join(tmp, "hf")
      make_hf_checkpoint(size, hf_dir)
      d_model = SIZES[size][1]
      head = np.random.RandomState(1).normal(0, d_model ** -0.5, (d_model, 1)).astype(np.float32)
      np.save(os.path.join(tmp, "head.npy"), head)
      for setting in args.settings.split(","):
        if setting not in SETTINGS:
          raise ValueError(f"--settings: unknown {setting!r}; choose from {sorted(SETTINGS)}")
        li, length = SETTINGS[setting]
        a = dict(hf_dir=hf_dir, head=os.path.join(tmp, "head.npy"), tmp=tmp,
                 jax_out=os.path.join(tmp, "jax_out.npz"), prompts=b,
                 num_decodes=args.num_decodes, num_samples=args.num_samples, beta=args.beta,
                 li=li, length=length, rm_rows=args.rm_rows, rm_arch=args.rm_arch,
                 threads=args.threads, platform=args.platform, dtype=args.dtype,
                 repeats=args.repeats or (5 if size == "tiny" else 2))
        jax_res = _child("jax", a)
        hf_res = _child("hf", a)
        jt, ht = sum(jax_res["split"]), sum(hf_res["split"])
        print(f"\n[{size} {SIZES[size]}, {setting}: prompt {li} / response {length} tokens, "
              f"best of {a['repeats']}]")
        _print_side("rso_jax", jax_res, b)
        _print_side("HF/TRL", hf_res, b)
        pad = -(b * args.num_decodes) % args.rm_rows
        print(f"  rso_jax reward model: {b * args.num_decodes} rows in chunks of "
              f"{args.rm_rows} ({pad} padding rows); Algorithm 1: {jax_res['accepted']} kept, "
              f"{jax_res['rounds']:.1f} rounds per prompt")
        print(f"  ratio (speed-up of rso_jax = peer time / rso_jax time): {ht / jt:.2f}x wall, "
              f"{hf_res['cpu_s'] / jax_res['cpu_s']:.2f}x process CPU   (target >= 3x)")
        print(f"  check: max |r_jax - r_hf| = {hf_res['max_abs_reward_diff']:.1e} (reward std "
              f"{hf_res['reward_std']:.2f}); max |log pi_jax - log pi_hf| over the paired "
              f"responses = {hf_res['max_abs_ref_logp_diff']:.1e}")


if __name__ == "__main__":
  main()
