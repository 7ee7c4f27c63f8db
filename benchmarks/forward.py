"""Forward+backward throughput of `network.py` vs. HF transformers' torch T5 on CPU.

    python benchmarks/forward.py [--configs=tiny,small] [--batch=8] [--length=64] [--iters=3]
                                 [--threads=1]

`--threads=N` pins the process to N cores (XLA and torch alike) and sets torch's thread count;
on a machine shared with other jobs N=1 gives stable numbers (multi-threaded torch collapses
when its OpenMP threads are descheduled).

For each config a randomly initialized HF `T5ForConditionalGeneration` (gated-GELU, untied head)
is saved to a temp dir and imported with `convert.from_hf`, so both frameworks run the same
weights on the same padded batch. One step = mean token cross-entropy over non-padding targets,
its gradient w.r.t. every parameter (no optimizer). JAX and torch steps are interleaved so that
load from other processes hits both alike; the median step time is reported (at least --iters
steps and --min_seconds of timing).
Tokens/s counts encoder + decoder positions, `batch * (length + length) / step_seconds`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))


def _threads_from_argv() -> int:
  for i, a in enumerate(sys.argv):
    if a.startswith("--threads="):
      return int(a.split("=", 1)[1])
    if a == "--threads" and i + 1 < len(sys.argv):
      return int(sys.argv[i + 1])
  return 0


_THREADS = _threads_from_argv()
if _THREADS > 0:  # pin the process (XLA's and torch's pools alike) before XLA starts
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:_THREADS]))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from rso_jax import convert
from rso_jax import network

CONFIGS = {
    "tiny": network.T5Config(),
    "small": network.T5Config(vocab_size=32128, emb_dim=512, num_heads=6, head_dim=64,
                              mlp_dim=1024, num_encoder_layers=8, num_decoder_layers=8),
}


def hf_model(cfg: network.T5Config, seed: int):
  hf_cfg = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim, num_heads=cfg.num_heads,
      d_ff=cfg.mlp_dim, num_layers=cfg.num_encoder_layers,
      num_decoder_layers=cfg.num_decoder_layers, feed_forward_proj="gated-gelu",
      dropout_rate=0.0, relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      tie_word_embeddings=False)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(hf_cfg)
  # transformers 5 ties lm_head to the embedding; T5 v1.1 has its own head.
  model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.emb_dim) * 0.05)
  model.config.tie_word_embeddings = False
  return model.train()


def make_batch(vocab: int, batch: int, length: int, seed: int):
  """Random tokens `[B, L]` with end padding (0); decoder inputs shifted right (BOS 0)."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, (batch, length)).astype(np.int32)
  tgt = rng.randint(2, vocab, (batch, length)).astype(np.int32)
  for row in range(batch):
    enc[row, rng.randint(length // 2, length + 1):] = 0
    tgt[row, rng.randint(length // 2, length + 1):] = 0
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec, tgt


def jax_step_fn(cfg: network.T5Config):
  model = network.Transformer(cfg)

  def loss_fn(params, enc, dec, tgt):
    logits = model.apply({"params": params}, enc, dec, tgt, enable_dropout=False)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    mask = (tgt > 0).astype(jnp.float32)
    return jnp.sum(nll * mask) / jnp.sum(mask)

  return jax.jit(jax.value_and_grad(loss_fn))


def torch_step(model, enc, dec, tgt) -> float:
  model.zero_grad(set_to_none=True)
  logits = model(input_ids=enc, attention_mask=enc > 0, decoder_input_ids=dec,
                 decoder_attention_mask=tgt > 0).logits
  loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten().long(),
                                           ignore_index=0)
  loss.backward()
  return float(loss.detach())


def bench(name: str, batch: int, length: int, iters: int, warmup: int,
          min_seconds: float) -> None:
  cfg = CONFIGS[name]
  model = hf_model(cfg, seed=0)
  with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d, safe_serialization=True)
    config, params = convert.from_hf(d)
  params = jax.device_put(params)
  enc, dec, tgt = make_batch(cfg.vocab_size, batch, length, seed=1)
  t_enc, t_dec, t_tgt = (torch.tensor(x) for x in (enc, dec, tgt))

  step = jax_step_fn(config)
  t0 = time.perf_counter()
  loss_j, _ = jax.block_until_ready(step(params, enc, dec, tgt))
  compile_s = time.perf_counter() - t0
  loss_t = torch_step(model, t_enc, t_dec, t_tgt)
  for _ in range(warmup - 1):
    jax.block_until_ready(step(params, enc, dec, tgt))
    torch_step(model, t_enc, t_dec, t_tgt)
  jax_s, torch_s = [], []
  while len(jax_s) < iters or (sum(jax_s) + sum(torch_s) < min_seconds and len(jax_s) < 500):
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, enc, dec, tgt))
    jax_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    torch_step(model, t_enc, t_dec, t_tgt)
    torch_s.append(time.perf_counter() - t0)
  tokens = batch * 2 * length
  jt, tt = tokens / statistics.median(jax_s), tokens / statistics.median(torch_s)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(f"{name:6s} {n_params / 1e6:7.1f}M  batch {batch}x({length}+{length})  "
        f"jax {jt:9.0f} tok/s  torch {tt:9.0f} tok/s  ratio jax/torch {jt / tt:5.2f}  "
        f"(jax compile {compile_s:.1f}s; loss jax {float(loss_j):.5f} torch {loss_t:.5f})",
        flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="tiny,small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--min_seconds", type=float, default=5.0,
                      help="keep timing (beyond --iters) until this much time is spent")
  parser.add_argument("--threads", type=int, default=0,
                      help="N > 0: pin the process to N cores and give torch N threads "
                      "(N=1 is robust on a loaded machine); 0: library defaults")
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} device(s)), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, {len(os.sched_getaffinity(0))} of "
        f"{os.cpu_count()} CPUs")
  for name in args.configs.split(","):
    if name not in CONFIGS:
      raise ValueError(f"--configs: unknown config {name!r}; choose from {sorted(CONFIGS)}")
    bench(name, args.batch, args.length, args.iters, args.warmup, args.min_seconds)


if __name__ == "__main__":
  main()
