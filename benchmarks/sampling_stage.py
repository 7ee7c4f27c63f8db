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


def _splits(t):
  """[(wall, cpu)] at the phase boundaries -> ([wall s per phase], [process CPU s per phase])."""
  return ([t[i + 1][0] - t[i][0] for i in range(len(PHASES))],
          [t[i + 1][1] - t[i][1] for i in range(len(PHASES))])


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
def run_jax(a) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rso_jax import convert, decoding, inference, network, partitioning  # pylint: disable=g-import-not-at-top
  from rso_jax import pairs as pairs_lib  # pylint: disable=g-import-not-at-top
  from rso_jax import rejection, reward_models  # pylint: disable=g-import-not-at-top
  assert reward_models.BT_SEPARATOR == SEPARATOR, reward_models.BT_SEPARATOR
  config, params = convert.from_hf(a["hf_dir"])
  head = np.load(a["head"])
  if a["dtype"] != "float32":  # weights and activations in bfloat16 (accelerators)
    config = dataclasses.replace(config, dtype=a["dtype"], param_dtype=a["dtype"])
    params = jax.tree.map(lambda x: x.astype(a["dtype"]), params)
    head = head.astype(a["dtype"])
  module = network.Transformer(config)
  seq2seq_rm = a["rm_arch"] == "encoder_decoder"
  rm_module = reward_models.BTRewardNetwork(config, "last" if seq2seq_rm else "mean",
                                            a["rm_arch"])
  rm_params = {"token_embedder": params["token_embedder"], "encoder": params["encoder"],
               "reward_head": {"kernel": head}}
  if seq2seq_rm:  # the policy's decoder without its logits projection
    rm_params["decoder"] = {k: v for k, v in params["decoder"].items() if k != "logits_dense"}
  b, n, k, li, length = a["prompts"], a["num_decodes"], a["num_samples"], a["li"], a["length"]
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
  mesh = partitioning.create_mesh((-1, 1, 1))
  with partitioning.MeshRules(mesh):
    params = jax.device_put(params)
    rm_params = jax.device_put(rm_params)
  sep = tuple(_separator_ids())
  enc_np = _prompts(b, li, config.vocab_size)
  rows = a["rm_rows"]
  rm_fn = lambda p, x, y: reward_models.bt_rewards_jit(rm_module, p, x, y, separator=sep,
                                                       eos_id=EOS)

  def stage(key):
    t = [(time.perf_counter(), time.process_time())]
    k_sample, k_select, k_pair = jax.random.split(key, 3)
    with partitioning.MeshRules(mesh):
      enc = partitioning.shard_batch({"x": enc_np}, mesh)["x"]
      out = partitioning.to_host(decoding.sample(
          module, params, enc, k_sample, num_decodes=n, max_decode_length=length,
          temperature=0.7, top_k=40, top_p=None, eos_id=None))
    t.append((time.perf_counter(), time.process_time()))
    if seq2seq_rm:  # each prompt encoded once, its N responses as decoder rows
      rewards = inference.map_prompts(rm_fn, rm_params, enc_np, out.tokens, max(rows // n, 1),
                                      mesh)
    else:
      x_rows = np.repeat(enc_np, n, axis=0)  # prompt-major, as RewardModel.reward flattens
      rewards = inference.map_rows(rm_fn, rm_params,
                                   [x_rows, out.tokens.reshape(b * n, length)],
                                   rows, mesh).reshape(b, n)
    t.append((time.perf_counter(), time.process_time()))
    valid = np.ones((b, n), bool)  # EOS off: every candidate full-length, none invalid
    masked = jnp.asarray(np.where(valid, rewards, 0.0))
    sel = jax.device_get(rejection.select("rso", k_select, masked, k, a["beta"],
                                          mask=jnp.asarray(valid), mode="paper"))
    pairs = jax.device_get(pairs_lib.make_pairs(
        "first_round", jnp.asarray(sel.indices), jnp.asarray(sel.valid), rewards=masked,
        key=k_pair))
    t.append((time.perf_counter(), time.process_time()))
    chosen, rejected = np.asarray(pairs.chosen), np.asarray(pairs.rejected)
    ref_c = np.take_along_axis(out.model_logps, chosen, 1)
    ref_r = np.take_along_axis(out.model_logps, rejected, 1)
    t.append((time.perf_counter(), time.process_time()))
    recs = _records(enc_np, out.tokens, rewards, ref_c, ref_r, chosen, rejected, pairs.valid)
    t.append((time.perf_counter(), time.process_time()))
    return _splits(t), (out, rewards, sel, pairs, recs)

  t0 = time.perf_counter()
  stage(jax.random.key(0))
  first = time.perf_counter() - t0
  best, cpu = None, []
  for r in range(a["repeats"]):
    c0 = time.process_time()
    split, res = stage(jax.random.key(r + 1))
    cpu.append(time.process_time() - c0)
    if best is None or sum(split[0]) < sum(best[0]):
      best = split
  out, rewards, sel, pairs, recs = res
  np.savez(a["jax_out"], tokens=out.tokens, rewards=rewards, model_logps=out.model_logps,
           chosen=np.asarray(pairs.chosen), rejected=np.asarray(pairs.rejected),
           valid=np.asarray(pairs.valid))
  return dict(split=best[0], cpu_split=best[1], cpu_s=min(cpu), first_call_s=first,
              pairs=len(recs), accepted=int(np.sum(sel.valid)), rounds=float(np.mean(sel.rounds)),
              rm_rows=rows)


def nn_unbox(tree):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.unbox(tree)


# --------------------------------------------------------------------------------- HF / TRL
def run_hf(a) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  gpu = a["platform"] == "gpu"
  device, dtype = torch.device("cuda" if gpu else "cpu"), getattr(torch, a["dtype"])
  if not gpu:
    torch.set_num_threads(a["threads"])
  load = lambda cls: cls.from_pretrained(a["hf_dir"]).eval().to(device, dtype)
  policy = load(transformers.T5ForConditionalGeneration)
  seq2seq_rm = a["rm_arch"] == "encoder_decoder"
  if seq2seq_rm:
    rm_t5 = load(transformers.T5Model)
  else:
    rm_encoder = load(transformers.T5EncoderModel)
  head = torch.as_tensor(np.load(a["head"])).to(device, dtype)  # [E, 1]
  host = lambda x: x.float().cpu().numpy()  # syncs the device
  b, n, k, li, length = a["prompts"], a["num_decodes"], a["num_samples"], a["li"], a["length"]
  beta = a["beta"]
  enc_np = _prompts(b, li, policy.config.vocab_size)
  enc = torch.as_tensor(enc_np, dtype=torch.long, device=device)
  mask = (enc > 0).long()
  sep = _separator_ids()
  prompt_ids = [[int(t) for t in row if t > 0] for row in enc_np]
  prompt_ids = [p[:-1] if p and p[-1] == EOS else p for p in prompt_ids]  # without EOS
  gen = dict(do_sample=True, num_return_sequences=n, top_k=40, temperature=0.7, top_p=1.0,
             max_new_tokens=length, min_new_tokens=length)

  def rewards_of(responses):  # [B * N, L] response tokens -> [B, N] rewards
    if seq2seq_rm:  # one (x, y) row each: the prompt encoded again for every response
      rows = torch.arange(b, device=device).repeat_interleave(n)
      start = torch.zeros((b * n, 1), dtype=torch.long, device=device)
      dec = torch.cat([start, responses[:, :-1]], 1)
      h = rm_t5(input_ids=enc[rows], attention_mask=mask[rows],
                decoder_input_ids=dec).last_hidden_state
      last = (responses > 0).sum(1).clamp(min=1) - 1
      return (h[torch.arange(b * n, device=device), last] @ head)[:, 0].reshape(b, n)
    rows = [prompt_ids[i // n] + sep + [t for t in y if t > 0]
            for i, y in enumerate(responses.tolist())]
    width = max(len(r) for r in rows)
    packed = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long,
                          device=device)
    m = (packed > 0).to(dtype)
    h = rm_encoder(input_ids=packed, attention_mask=m.long()).last_hidden_state
    pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
    return (pooled @ head)[:, 0].reshape(b, n)

  index = lambda x: torch.as_tensor(x.reshape(-1), device=device)

  def ref_logps(rows, labels):  # teacher-forced log pi of labels [M, L] for prompt rows [M]
    logits = policy(input_ids=enc[rows], attention_mask=mask[rows], labels=labels).logits
    logp = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]
    return (logp * (labels > 0)).sum(-1)

  def stage(seed):
    torch.manual_seed(seed)
    rng = random.Random(seed)
    t = [(time.perf_counter(), time.process_time())]
    out = policy.generate(input_ids=enc, attention_mask=mask, **gen)
    responses = out[:, 1:]  # drop the decoder start token
    if gpu:
      torch.cuda.synchronize()
    t.append((time.perf_counter(), time.process_time()))
    rewards = host(rewards_of(responses))
    t.append((time.perf_counter(), time.process_time()))
    chosen, rejected = [], []
    for i in range(b):
      kept = algorithm1(rewards[i].tolist(), k, beta, rng)
      rng.shuffle(kept)
      pc, pr = [], []
      for j in range(0, len(kept) - 1, 2):
        x, y = kept[j], kept[j + 1]
        better = rewards[i, x] > rewards[i, y]
        pc.append(x if better else y)
        pr.append(y if better else x)
      chosen.append(pc)
      rejected.append(pr)
    chosen, rejected = np.array(chosen), np.array(rejected)
    t.append((time.perf_counter(), time.process_time()))
    p = chosen.shape[1]
    rows = torch.arange(b, device=device).repeat_interleave(p)
    resp = responses.reshape(b, n, -1)
    labels = torch.cat([resp[rows, index(chosen)], resp[rows, index(rejected)]])
    lp = host(ref_logps(torch.cat([rows, rows]), labels))
    ref_c, ref_r = lp[:b * p].reshape(b, p), lp[b * p:].reshape(b, p)
    t.append((time.perf_counter(), time.process_time()))
    recs = _records(enc_np, resp.cpu().numpy(), rewards, ref_c, ref_r, chosen, rejected,
                    np.ones_like(chosen, bool))
    t.append((time.perf_counter(), time.process_time()))
    return _splits(t), recs

  with torch.no_grad():
    t0 = time.perf_counter()
    stage(0)
    first = time.perf_counter() - t0
    best, cpu = None, []
    for r in range(a["repeats"]):
      c0 = time.process_time()
      split, recs = stage(r + 1)
      cpu.append(time.process_time() - c0)
      if best is None or sum(split[0]) < sum(best[0]):
        best = split
    # Cross-checks on what rso_jax sampled: rewards, and log pi of its paired responses.
    saved = np.load(a["jax_out"])
    jax_tokens = torch.as_tensor(saved["tokens"].reshape(b * n, length), dtype=torch.long,
                                 device=device)
    r_hf = host(rewards_of(jax_tokens))
    reward_diff = float(np.max(np.abs(r_hf - saved["rewards"])))
    ch, rj = saved["chosen"], saved["rejected"]
    p = ch.shape[1]
    rows = torch.arange(b, device=device).repeat_interleave(p)
    toks = jax_tokens.reshape(b, n, length)
    labels = torch.cat([toks[rows, index(ch)], toks[rows, index(rj)]])
    lp_hf = host(ref_logps(torch.cat([rows, rows]), labels))
    lp_jax = np.concatenate([np.take_along_axis(saved["model_logps"], ch, 1).reshape(-1),
                             np.take_along_axis(saved["model_logps"], rj, 1).reshape(-1)])
  if a["dtype"] == "float32":
    assert reward_diff <= 1e-3, f"rewards differ: max |r_jax - r_hf| = {reward_diff}"
  return dict(split=best[0], cpu_split=best[1], cpu_s=min(cpu), first_call_s=first,
              pairs=len(recs), max_abs_reward_diff=reward_diff,
              max_abs_ref_logp_diff=float(np.max(np.abs(lp_hf - lp_jax))),
              reward_std=float(np.std(saved["rewards"])))


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
