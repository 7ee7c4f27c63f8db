"""RSO policy training step: rso_jax's trainer vs PyTorch (eager and `torch.compile`), same weights.

    python benchmarks/train_step.py [--sizes small,base] [--batch 8] [--prompt_length 64]
                                    [--response_length 64] [--threads 1] [--peers eager,compile]
    python benchmarks/train_step.py --platform gpu --dtype bfloat16 --sizes base,large   # GPU

One step = the hinge-norm loss (RSO paper Eq. 10, γ = 0.05)
`max(0, 1 − γ·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])`,
mean over a batch of (prompt, chosen, rejected), its gradient w.r.t. every parameter, global-norm
clipping (`--grad_clip`, 1.0 as in gin/stages/policy.gin and HF Trainer's default) and an AdamW update
(lr 1e-4, `--weight_decay`). The reference log-probs are inputs (cached, as the sampling stage
stores them): the initial policy's own log-probs plus N(0, 2²) noise, so every pair starts on
the hinge's active side with a loss near 1 and a non-zero gradient.

rso_jax side: the trainer's own jitted step, not a copy. `trainer.Trainer(PolicyModel(...),
trainer.make_optimizer("adamw", ...), mesh)` is built as `train.train` builds it and its
`_train_step` (jit of `value_and_grad(PolicyModel.loss_fn)` + `optax` update + the grad/param
norms it logs, state donated) is called on a batch placed on the device once
(`Trainer.train_step` would re-place the NumPy batch every call). `PolicyModel.pair_logps` runs
chosen and rejected as 2 decoder rows per prompt against ONE encoder pass.

Peer: HF `T5ForConditionalGeneration` with the same weights, stepped the way TRL's DPOTrainer
does it for encoder-decoder models: the chosen and rejected batches concatenated (`[2B, Lr]`),
the prompt repeated (`[2B, Lp]`, so the encoder runs twice per prompt), one forward, per-sequence
sums of the target tokens' log-probs (`gather(logits) − logsumexp(logits)`, TRL's
`selective_log_softmax` in float32), the loss, `backward()`, `clip_grad_norm_`,
`torch.optim.AdamW.step()`. `compile`: the same with the forward+loss function wrapped in
`torch.compile` (inductor; its backward is compiled by AOTAutograd; the optimizer step stays
eager); a failure to compile is caught and reported.

All sides are interleaved step by step (machine load hits them alike) and start from the same
weights; the first step's loss of each is printed and compared (the check: within 1e-4
relative in float32), and so are the losses after the last timed step (the sides took the
same number of updates on the same batch; with the default lr the hinge is satisfied, loss 0,
within a few steps: the step still runs the whole forward+backward and update, so timings are
unaffected). Reported: median ms/step (on CPU also the median process CPU time per step, which other jobs
on a shared machine disturb far less than wall time), tokens/s with
tokens = B·(Lp + 2·Lr) (prompt once, both responses; the same count for every side), the
ratios rso_jax / peer (> 1: rso_jax faster), and the model FLOPs per step (analytic, of
rso_jax's computation: matmuls and attention of one encoder pass per prompt and 2 decoder rows,
×3 for forward+backward) next to XLA's `cost_analysis()` count. On GPU (or with
`--peak_tflops`) MFU = model FLOPs / step time / peak; on GPU the peak HBM is
`memory_stats()['peak_bytes_in_use']` (and torch's `max_memory_allocated()` for its peer).

Threads: `--threads N` (default 1) pins the process to N cores before XLA starts and gives
torch N threads, as benchmarks/forward.py does. On GPU, `--platform gpu` and the torch peer runs
only if torch sees CUDA (`--dtype bfloat16`: rso_jax's `T5Config.dtype` bfloat16 with float32
params; torch under `autocast(bfloat16)` with float32 params).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Mapping

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _flag_from_argv(name: str, default: str) -> str:
  for i, a in enumerate(sys.argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(sys.argv):
      return sys.argv[i + 1]
  return default


_PLATFORM = _flag_from_argv("platform", "cpu")
_THREADS = int(_flag_from_argv("threads", "1" if _PLATFORM == "cpu" else "0"))
if _THREADS > 0:  # pin the process (XLA's and torch's pools alike) before XLA starts
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:_THREADS]))
os.environ.setdefault("JAX_PLATFORMS", "cuda" if _PLATFORM == "gpu" else "cpu")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from decoding import SIZES, cpu_description  # pylint: disable=g-import-not-at-top
from decoding import make_hf_model as _hf_model  # pylint: disable=g-import-not-at-top
from rso_jax import convert
from rso_jax import models
from rso_jax import partitioning
from rso_jax import trainer as trainer_lib

# Dense bf16 peak, TFLOP/s, by a substring of the device name (nvidia-smi / device_kind).
GPU_PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0))


def peak_tflops_for(name: str):
  for key, tf in GPU_PEAK_TFLOPS:
    if key.lower() in name.lower():
      return tf
  return None


def make_hf_model(size: str, seed: int = 0):
  """Random HF T5 v1.1 (gated-GELU, untied head; `decoding.make_hf_model`) in train mode."""
  import torch  # pylint: disable=g-import-not-at-top
  model = _hf_model(size, seed)
  if model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr():  # keep the head untied
    vocab, d_model = model.lm_head.weight.shape
    model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, d_model) * 0.05)
  return model.train()


def make_batch(vocab: int, batch: int, lp: int, lr: int, seed: int = 1) -> dict:
  """A `PairwiseFeatureConverter`-style batch with end padding (0) and BOS-0 shifted inputs."""
  rng = np.random.RandomState(seed)

  def tokens(length, lo):
    t = rng.randint(2, vocab, (batch, length)).astype(np.int32)
    for row in range(batch):
      t[row, rng.randint(lo, length + 1):] = 0
    return t

  out = {"encoder_input_tokens": tokens(lp, lp // 2)}
  for r in ("chosen", "rejected"):
    tgt = tokens(lr, max(lr // 2, 1))
    out[f"{r}_decoder_target_tokens"] = tgt
    out[f"{r}_decoder_input_tokens"] = np.concatenate(
        [np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    out[f"{r}_loss_weights"] = (tgt > 0).astype(np.float32)
  return out


def model_flops(size: str, b: int, lp: int, lr: int, repeat_encoder: bool = False) -> float:
  """Forward+backward FLOPs (3x forward) of one step's matmuls and attention contractions."""
  vocab, e, h, d, f, ne, nd = SIZES[size]
  hd = h * d
  be = 2 * b if repeat_encoder else b  # encoder rows
  te, td = be * lp, 2 * b * lr  # encoder / decoder tokens
  enc = ne * (2 * te * (4 * e * hd + 3 * e * f) + 4 * be * lp * lp * hd)
  dec = nd * (2 * td * (4 * e * hd + 2 * e * hd + 3 * e * f)  # self q,k,v,o; cross q,o; mlp
              + 2 * te * 2 * e * hd  # cross keys/values of the encoder output
              + 4 * 2 * b * lr * lr * hd + 4 * 2 * b * lr * lp * hd)  # self / cross attention
  logits = 2 * td * e * vocab
  return 3.0 * (enc + dec + logits)


# ---------------------------------------------------------------------------------------------
# rso_jax: the trainer's jitted step
# ---------------------------------------------------------------------------------------------
class JaxSide:
  name = "rso_jax"

  def __init__(self, config, params, batch, args):
    config = dataclasses.replace(config, dtype=args.dtype)
    model = models.PolicyModel(config, loss="hinge_norm", gamma=args.gamma,
                               use_cached_reference=True)
    schedule = trainer_lib.make_schedule(args.lr)
    opt = trainer_lib.make_optimizer("adamw", schedule, weight_decay=args.weight_decay,
                                     grad_clip=args.grad_clip or None)
    mesh = partitioning.create_mesh((-1, 1, 1))
    self.tr = trainer_lib.Trainer(model, opt, mesh, batch_size=args.batch,
                                  feature_lengths={"inputs": args.prompt_length,
                                                   "targets": args.response_length},
                                  seed=0, learning_rate_fn=schedule)
    self.state = self.tr.init_state(params)
    self.batch = self.tr.shard(batch)
    t0 = time.perf_counter()
    with self.tr._ctx():  # pylint: disable=protected-access
      compiled = self.tr._train_step.lower(  # pylint: disable=protected-access
          self.state, self.batch, self.tr.frozen).compile()
    self.compile_s = time.perf_counter() - t0
    self.xla_flops = None
    try:
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      self.xla_flops = float(cost.get("flops", float("nan")))
    except Exception:  # pylint: disable=broad-except
      pass
    self.losses = []

  def step(self) -> float:
    with self.tr._ctx():  # pylint: disable=protected-access
      self.state, metrics = self.tr._train_step(  # pylint: disable=protected-access
          self.state, self.batch, self.tr.frozen)
    loss = metrics["loss"]
    jax.block_until_ready((self.state, loss))
    return loss

  def peak_memory(self):
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


# ---------------------------------------------------------------------------------------------
# PyTorch peer: TRL DPOTrainer-style concatenated forward
# ---------------------------------------------------------------------------------------------
class TorchSide:

  def __init__(self, name, hf_model, batch, ref, args, device):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch, self.name, self.device = torch, name, device
    self.model = hf_model
    self.args = args
    t = lambda x: torch.as_tensor(x).to(device)
    prompt = t(batch["encoder_input_tokens"]).long()
    self.input_ids = torch.cat([prompt, prompt], 0)  # [2B, Lp]: TRL repeats the prompt
    self.attention_mask = self.input_ids > 0
    cat = lambda k: torch.cat([t(batch[f"chosen_{k}"]), t(batch[f"rejected_{k}"])], 0)
    self.decoder_input_ids = cat("decoder_input_tokens").long()  # [2B, Lr]
    self.labels = cat("decoder_target_tokens").long()
    self.loss_mask = cat("loss_weights").float()
    self.decoder_attention_mask = self.labels > 0
    self.ref_chosen, self.ref_rejected = t(ref[0]).float(), t(ref[1]).float()
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr, betas=(0.9, 0.999),
                                 eps=1e-8, weight_decay=args.weight_decay)
    self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                     if args.dtype == "bfloat16" else None)
    fn = self._loss
    if name == "compile":
      fn = torch.compile(fn)
    self.loss_fn = fn
    self.compile_s = None

  def _loss(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels,
            loss_mask, ref_chosen, ref_rejected):
    torch = self.torch
    logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                        decoder_input_ids=decoder_input_ids,
                        decoder_attention_mask=decoder_attention_mask).logits.float()
    # selective log-softmax: log p(y_t) = logit[y_t] - logsumexp(logits)
    per_token = (torch.gather(logits, 2, labels.unsqueeze(2)).squeeze(2)
                 - torch.logsumexp(logits, dim=-1))
    logps = (per_token * loss_mask).sum(-1)
    b = logps.shape[0] // 2
    pc, pr = logps[:b], logps[b:]
    delta = (pc - ref_chosen) - (pr - ref_rejected)
    return torch.relu(1.0 - self.args.gamma * delta).mean()

  def step(self) -> float:
    torch = self.torch
    self.opt.zero_grad(set_to_none=True)
    args = (self.input_ids, self.attention_mask, self.decoder_input_ids,
            self.decoder_attention_mask, self.labels, self.loss_mask, self.ref_chosen,
            self.ref_rejected)
    if self.autocast is not None:
      with self.autocast:
        loss = self.loss_fn(*args)
    else:
      loss = self.loss_fn(*args)
    loss.backward()
    if self.args.grad_clip:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
    self.opt.step()
    value = float(loss.detach())  # syncs the device
    return value

  def peak_memory(self):
    if self.device.type == "cuda":
      return self.torch.cuda.max_memory_allocated(self.device)
    return None


def _fmt_bytes(n) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def _torch_device(size: str, args, peers: List[str]):
  """(torch device, the torch peers to run): on a GPU without CUDA in torch, none."""
  import torch  # pylint: disable=g-import-not-at-top
  device = torch.device("cpu")
  if args.platform == "gpu":
    if torch.cuda.is_available():
      device = torch.device("cuda")
    elif peers:
      print(f"[{size}] torch sees no CUDA device: skipping the torch peers {peers}", flush=True)
      peers = []
  return device, peers


def _weights_and_batch(size: str, args):
  """(config, params, HF state dict, batch with the reference log-probs, (ref chosen, ref
  rejected)): one random HF model, converted for rso_jax."""
  b, lp, lr = args.batch, args.prompt_length, args.response_length
  hf = make_hf_model(size)
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d, safe_serialization=True)
    config, params = convert.from_hf(d)
    state_dict = {k: v.clone() for k, v in hf.state_dict().items()}
  del hf
  batch = make_batch(config.vocab_size, b, lp, lr)
  # Reference log-probs: the initial policy's own (teacher-forced, float32) + N(0, 2^2) noise.
  scorer = models.PolicyModel(config, loss="hinge_norm", gamma=args.gamma)
  pc, pr = jax.jit(scorer.pair_logps)(params, {k: jnp.asarray(v) for k, v in batch.items()})
  noise = np.random.RandomState(2).normal(0.0, 2.0, (2, b)).astype(np.float32)
  ref = (np.asarray(pc) + noise[0], np.asarray(pr) + noise[1])
  batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref
  return config, params, state_dict, batch, ref


def _first_steps(size: str, sides: list) -> Dict[str, float]:
  """Each side's first step (torch.compile compiles in it): {side: its loss}. A side whose
  torch.compile fails is reported and removed from `sides`."""
  first = {}
  for side in list(sides):
    t0 = time.perf_counter()
    try:
      first[side.name] = float(side.step())
    except Exception as e:  # pylint: disable=broad-except
      if side.name != "compile":
        raise
      msg = str(e).strip().splitlines()
      print(f"[{size}] torch.compile FAILED ({type(e).__name__}: "
            f"{msg[0] if msg else ''}); dropped", flush=True)
      sides.remove(side)
      continue
    if side.name == "compile":
      side.compile_s = time.perf_counter() - t0
      print(f"[{size}] torch.compile: first step (compilation) {side.compile_s:.1f}s", flush=True)
  return first


def _timed_steps(sides: list, args):
  """Steps the sides in turn until each has `--iters` steps and `--min_seconds` have passed
  (at most 500): ({side: [wall s]}, {side: [process CPU s]}, {side: last loss})."""
  times = {s.name: [] for s in sides}
  cpu = {s.name: [] for s in sides}  # process CPU time (all threads): robust to descheduling
  last = {}
  t_start = time.perf_counter()
  while True:
    for side in sides:
      t0, c0 = time.perf_counter(), time.process_time()
      last[side.name] = float(side.step())
      times[side.name].append(time.perf_counter() - t0)
      cpu[side.name].append(time.process_time() - c0)
    n = len(times["rso_jax"])
    if n >= args.iters and (time.perf_counter() - t_start >= args.min_seconds or n >= 500):
      break
  return times, cpu, last


def _report(size: str, args, sides: list, params, first: Mapping[str, float],
            last: Mapping[str, float], times: Mapping[str, List[float]],
            cpu: Mapping[str, List[float]]) -> None:
  b, lp, lr = args.batch, args.prompt_length, args.response_length
  n = len(times["rso_jax"])
  tokens = b * (lp + 2 * lr)
  flops = model_flops(size, b, lp, lr)
  peak = args.peak_tflops
  if peak is None and args.platform == "gpu":
    peak = peak_tflops_for(jax.devices()[0].device_kind)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  print(f"[{size}] {n_params / 1e6:.1f}M params, batch {b} x (prompt {lp} + 2 x {lr}), "
        f"{args.dtype}, {n} timed steps per side; model FLOPs/step {flops / 1e12:.3f} T "
        f"(XLA cost_analysis {sides[0].xla_flops / 1e12 if sides[0].xla_flops else float('nan'):.3f} T; "
        f"TRL-style repeated encoder {model_flops(size, b, lp, lr, True) / 1e12:.3f} T)", flush=True)
  med = {name: statistics.median(ts) for name, ts in times.items()}
  for side in sides:
    s = med[side.name]
    line = (f"  {side.name:8s} {s * 1e3:9.1f} ms/step  {tokens / s:9.0f} tok/s  "
            f"(min {min(times[side.name]) * 1e3:.1f} ms"
            + (f", CPU {statistics.median(cpu[side.name]) * 1e3:.1f} ms" if args.platform == "cpu"
               else "") + ")  "
            f"first loss {first[side.name]:.7f}  last loss {last[side.name]:.7f}")
    if peak:
      line += f"  MFU {flops / s / (peak * 1e12) * 100:.2f}% of {peak:g} TFLOP/s"
    if args.platform == "gpu":
      line += f"  peak mem {_fmt_bytes(side.peak_memory())}"
    print(line, flush=True)
  for side in sides[1:]:
    rel = abs(first["rso_jax"] - first[side.name]) / max(abs(first[side.name]), 1e-30)
    tol = 1e-4 if args.dtype == "float32" else 1e-2
    cpu_ratio = (f", CPU time {statistics.median(cpu[side.name]) / statistics.median(cpu['rso_jax']):.2f}x"
                 if args.platform == "cpu" else "")
    print(f"  rso_jax / {side.name}: {med[side.name] / med['rso_jax']:.2f}x{cpu_ratio}  "
          f"(first-step loss rel. diff {rel:.2e}: {'OK' if rel <= tol else 'MISMATCH'} "
          f"at {tol:g})", flush=True)


def bench(size: str, args) -> None:
  """One size: rso_jax and the torch peers from the same weights, stepped in turn; printed."""
  device, peers = _torch_device(size, args, [p for p in args.peers.split(",") if p])
  config, params, state_dict, batch, ref = _weights_and_batch(size, args)
  sides = [JaxSide(config, params, batch, args)]
  print(f"[{size}] rso_jax: trainer step compiled in {sides[0].compile_s:.1f}s", flush=True)
  for name in peers:
    if name not in ("eager", "compile"):
      raise ValueError(f"--peers: unknown peer {name!r} (eager, compile)")
    model = make_hf_model(size)
    model.load_state_dict(state_dict)
    model.to(device)
    sides.append(TorchSide(name, model, batch, ref, args, device))
  first = _first_steps(size, sides)
  for _ in range(args.warmup):
    for side in sides:
      side.step()
  times, cpu, last = _timed_steps(sides, args)
  _report(size, args, sides, params, first, last, times, cpu)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="small")
  parser.add_argument("--batch", type=int, default=8, help="B prompts (pairs) per step")
  parser.add_argument("--prompt_length", type=int, default=64)
  parser.add_argument("--response_length", type=int, default=64)
  parser.add_argument("--gamma", type=float, default=0.05)
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--weight_decay", type=float, default=0.0)
  parser.add_argument("--grad_clip", type=float, default=1.0, help="0: no clipping")
  parser.add_argument("--iters", type=int, default=5, help="at least this many timed steps")
  parser.add_argument("--min_seconds", type=float, default=10.0,
                      help="keep timing (beyond --iters) until this much time is spent")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
  parser.add_argument("--threads", type=int, default=None,
                      help="N > 0: pin to N cores, torch gets N threads (CPU default 1)")
  parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="activation dtype (params stay float32)")
  parser.add_argument("--peers", default="eager,compile",
                      help="torch peers: eager, compile (comma list; empty: rso_jax alone)")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="peak TFLOP/s for MFU (GPU default: from the device name)")
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  if _THREADS > 0:
    torch.set_num_threads(_THREADS)
  dev = jax.devices()[0]
  if args.platform == "gpu" and dev.platform != "gpu":
    sys.exit(f"--platform gpu but jax's device is {dev.platform}")
  print(f"jax {jax.__version__} ({dev.platform}: {dev.device_kind}, {jax.device_count()} "
        f"device(s)), torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, {len(os.sched_getaffinity(0))} of "
        f"{os.cpu_count()} CPUs ({cpu_description()}), "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  for size in args.sizes.split(","):
    if size not in SIZES:
      raise ValueError(f"--sizes: unknown size {size!r}; choose from {sorted(SIZES)}")
    bench(size, args)


if __name__ == "__main__":
  main()
