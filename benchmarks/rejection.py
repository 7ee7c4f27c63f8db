"""Throughput of the jitted rejection sampler vs a plain-Python Algorithm 1.

  python benchmarks/rejection.py [--batch 4096 --num_candidates 64 \
      --num_samples 8 --beta 0.5 --repeats 20]

Both run in this process on the same rewards[B, N] (i.i.d. N(0, 1), float32,
fixed seed), interleaved so that machine noise hits both alike. The jitted
side is the public `statistical_rejection_sampling` (host validation
included, results blocked on); compile time is reported separately. The
reference is the paper's loop (dict of candidates, `random.random()` per
visit, `math.exp`), the fastest honest pure-Python form. Uses the default
jax backend, so on a GPU it reports GPU numbers.

The work floor is one uniform per visit: `visits` (sum of num_visited) is
printed next to the uniforms the jitted sampler actually drew.
"""

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import jax
import jax.numpy as jnp
import numpy as np

from algorithm1 import reference  # pylint: disable=g-import-not-at-top
from rso_jax import kernels
from rso_jax import rejection


def _jitted_samplers(key, rewards, k: int, beta: float) -> dict:
  """{mode: (a call of the public sampler, its first call's seconds, its result)}."""
  samplers = {}
  for mode in ("paper", "single_pass"):

    def run(mode=mode):
      return jax.block_until_ready(rejection.statistical_rejection_sampling(
          key, rewards, k, beta, mode=mode))

    t0 = time.perf_counter()
    res = run()
    samplers[mode] = (run, time.perf_counter() - t0, res)
  return samplers


def _time_interleaved(samplers: dict, run_reference, repeats: int, ref_repeats: int):
  """Wall and process CPU seconds per call of each sampler and of the reference, interleaved
  so that noise hits both alike: (times, cpu, ref_times, ref_cpu)."""
  times = {mode: [] for mode in samplers}
  cpu = {mode: [] for mode in samplers}
  ref_times, ref_cpu = [], []
  for i in range(repeats):
    if i < ref_repeats:
      c0 = time.process_time()
      ref_times.append(run_reference())
      ref_cpu.append(time.process_time() - c0)
    for mode, (run, _, _) in samplers.items():
      t0, c0 = time.perf_counter(), time.process_time()
      run()
      times[mode].append(time.perf_counter() - t0)
      cpu[mode].append(time.process_time() - c0)
  return times, cpu, ref_times, ref_cpu


def _uniforms_drawn(rounds: np.ndarray, b: int, n: int) -> int:
  """Uniforms the jitted sampler drew: replay the step schedule (all prompts stay
  round-synchronous, so step t processes the prompts needing round t)."""
  n_pad = -(-n // 64) * 64
  need = [int(np.sum(rounds > t)) for t in range(int(rounds.max()))]
  caps = kernels.step_capacities(b)
  drawn, t = 0, 0
  for level, cap in enumerate(caps):
    limit = caps[level + 1] if level + 1 < len(caps) else 0
    while t < len(need) and need[t] > limit:
      drawn, t = drawn + cap * n_pad, t + 1
  return drawn


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--batch", type=int, default=4096)
  p.add_argument("--num_candidates", type=int, default=64)
  p.add_argument("--num_samples", type=int, default=8)
  p.add_argument("--beta", type=float, default=0.5)
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--ref_repeats", type=int, default=3)
  args = p.parse_args()
  b, n, k, beta = args.batch, args.num_candidates, args.num_samples, args.beta

  dev = jax.devices()[0]
  print(f"backend={jax.default_backend()} device={dev.device_kind} "
        f"devices={jax.device_count()} B={b} N={n} k={k} beta={beta} "
        f"rewards~N(0,1)")
  rewards_np = np.random.default_rng(0).normal(size=(b, n)).astype(np.float32)
  rewards = jax.device_put(jnp.asarray(rewards_np))
  rows = rewards_np.tolist()
  samplers = _jitted_samplers(jax.random.key(0), rewards, k, beta)

  def run_reference():
    rng = random.Random(0)
    t0 = time.perf_counter()
    for row in rows:
      reference(row, k, beta, rng)
    return time.perf_counter() - t0

  times, cpu, ref_times, ref_cpu = _time_interleaved(samplers, run_reference, args.repeats,
                                                     args.ref_repeats)
  ref_med = statistics.median(ref_times)
  print(f"reference (plain Python, paper mode): median {ref_med * 1e3:8.2f} ms"
        f"  {b / ref_med:12,.0f} prompts/s  {b * n / ref_med:14,.0f} cand/s")
  for mode, (_, first, res) in samplers.items():
    med, best = statistics.median(times[mode]), min(times[mode])
    compile_ms = (first - med) * 1e3
    print(f"jitted {mode}: compile " + (
        f"{compile_ms:.0f} ms" if compile_ms > 50 else
        "shared with the call above (mode is a traced argument)"))
    print(f"  median {med * 1e3:8.2f} ms  {b / med:12,.0f} prompts/s  "
          f"{b * n / med:14,.0f} cand/s  (best {best * 1e3:.2f} ms; "
          f"process CPU time median {statistics.median(cpu[mode]) * 1e3:.2f}"
          f" ms)")
    if mode == "paper":
      print(f"  speedup vs reference: {ref_med / med:.1f}x median wall, "
            f"{min(ref_times) / best:.1f}x best wall, "
            f"{statistics.median(ref_cpu) / statistics.median(cpu[mode]):.1f}"
            f"x median CPU time")
    rounds = np.asarray(res.rounds)
    drawn = _uniforms_drawn(rounds, b, n)
    visits = int(np.sum(res.num_visited))
    print(f"  rounds mean {rounds.mean():.2f} max {rounds.max()}; visits "
          f"(one uniform each: the floor) {visits / b:.1f}/prompt; uniforms "
          f"drawn {drawn / b:.1f}/prompt; acceptance "
          f"{np.sum(res.num_accepted) / visits:.4f}; accepted/prompt "
          f"{np.mean(res.num_accepted):.2f}")


if __name__ == "__main__":
  main()
