"""Sampling throughput: `rso_jax.decoding.sample` vs HuggingFace `generate`, same weights, CPU.

    python benchmarks/decoding.py [--sizes tiny,small] [--prompts 2] [--num_decodes 64]
                                  [--prompt_length 32] [--length 32] [--repeats R] [--threads 1]
    python benchmarks/decoding.py --sizes small --step_lengths 32,256   # rso_jax alone: ms per
                                  # decode step at each max_decode_length, and their ratio
    python benchmarks/decoding.py --platform gpu --dtype bfloat16 --sizes base,large   # on a GPU
                                  # (benchmarks/gpu.sh); HF is skipped if torch has no CUDA

For each size a randomly initialized HF `T5ForConditionalGeneration` (T5 v1.1 layout: gated
GELU, untied head) is saved to a temporary directory and converted with `convert.from_hf`, so
both sides run the same weights. Both sample N = 64 continuations of 32 tokens for each of B
prompts with temperature 0.7 and top-k 40, EOS disabled (HF: `min_new_tokens = max_new_tokens`;
rso_jax: `eos_id=None`), so every run generates exactly B * N * 32 tokens.

Both sides get the same CPU thread budget and are pinned to the same cores (`--threads`,
default 1: on a shared machine oversubscribed OpenMP threads make torch's timings erratic). Each side runs in its own child
process (so the peak resident memory of one framework does not hide the other's) and reports:
  * tokens/s: B * N * L / wall time of one sampling call, best of `--repeats` after a warm-up
    call (the warm-up includes XLA compilation for rso_jax, reported separately); and the same
    over the process CPU time of the call (`time.process_time`, all threads), which other
    jobs on a shared machine disturb far less than wall time;
  * resident memory of the child (whole process: interpreter, framework, weights, buffers):
    after loading the model; the peak through the warm-up call (`ru_maxrss`; for rso_jax this
    includes XLA compilation); and the peak over the timed calls alone (VmHWM after resetting
    it through /proc/self/clear_refs), with its growth over the RSS at their start;
  * rso_jax only: XLA's static buffer assignment for the compiled sampler
    (`memory_analysis()`: temporaries incl. the KV caches, outputs).
As a cross-check of the weights and of `model_logps`, HF scores the sequences rso_jax sampled
(teacher-forced) and the largest |log π_jax − log π_hf| per sequence is printed.

What the compiled sampler showed, layout by layout: benchmarks/README.md ("The sampler's
KV caches").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

SIZES = {
    # name: (vocab, d_model, heads, head_dim, d_ff, encoder layers, decoder layers)
    "tiny": (384, 128, 4, 32, 256, 2, 2),
    "small": (32128, 512, 6, 64, 1024, 8, 8),  # T5 v1.1 small
    "base": (32128, 768, 12, 64, 2048, 12, 12),  # T5 v1.1 base
    "large": (32128, 1024, 16, 64, 2816, 24, 24),  # T5 v1.1 large
}


def cpu_description() -> str:
  """This machine's CPU as the results depend on it: model, family/model ids, vector ISA, cores.

  The ratios against torch differ by CPU (XLA's and torch's CPU kernels do not scale alike
  from AVX2 to AVX-512), so every benchmark names the one it ran on.
  """
  info = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  flags = set(info.get("flags", "").split())
  isa = ("AVX-512" + (" (+bf16)" if "avx512_bf16" in flags else "") if "avx512f" in flags
         else "AVX2" if "avx2" in flags else "no AVX2")
  name = info.get("model name", "unknown CPU")
  ids = (f" family {info['cpu family']} model {info['model']}"
         if "cpu family" in info and "model" in info else "")
  return f"{name}{ids}, {isa}, {os.cpu_count()} cores"


def _status_mib(field: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def _reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark (VmHWM) so the next reading covers one phase only."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _prompts(batch: int, length: int, vocab: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  tokens = rng.randint(3, vocab, (batch, length)).astype(np.int32)
  tokens[1:, length // 2:] = 0  # some padding
  return tokens


def make_hf_checkpoint(size: str, out_dir: str) -> None:
  make_hf_model(size).eval().save_pretrained(out_dir, safe_serialization=True)


def make_hf_model(size: str, seed: int = 0):
  """A randomly initialized HF T5 v1.1 (gated GELU, untied head) of one of `SIZES`."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  vocab, d_model, heads, head_dim, d_ff, n_enc, n_dec = SIZES[size]
  config = transformers.T5Config(
      vocab_size=vocab, d_model=d_model, d_kv=head_dim, num_heads=heads, d_ff=d_ff,
      num_layers=n_enc, num_decoder_layers=n_dec, feed_forward_proj="gated-gelu",
      relative_attention_num_buckets=32, relative_attention_max_distance=128,
      dropout_rate=0.0, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
      decoder_start_token_id=0)
  torch.manual_seed(seed)
  return transformers.T5ForConditionalGeneration(config)


def run_jax(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rso_jax import convert, decoding, network  # pylint: disable=g-import-not-at-top
  config, params = convert.from_hf(args.hf_dir)
  if args.dtype != "float32":  # weights and activations in bfloat16 (accelerators)
    config = dataclasses.replace(config, dtype=args.dtype, param_dtype=args.dtype)
    params = jax.tree.map(lambda x: x.astype(args.dtype), params)
  module = network.Transformer(config)
  params = jax.device_put(params)
  enc = jax.device_put(_prompts(args.prompts, args.prompt_length, config.vocab_size))
  kwargs = dict(num_decodes=args.num_decodes, max_decode_length=args.length, temperature=0.7,
                top_k=40, eos_id=None)
  rss_loaded = _status_mib("VmRSS")
  t0 = time.perf_counter()
  out = decoding.sample(module, params, enc, jax.random.key(0), **kwargs)
  jax.block_until_ready(out)
  first_call = time.perf_counter() - t0
  peak_with_compile = _peak_rss_mib()
  rss_before = _status_mib("VmRSS")
  reset = _reset_peak_rss()
  times = []
  cpu_times = []
  for r in range(args.repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    out = decoding.sample(module, params, enc, jax.random.key(r + 1), **kwargs)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  peak_sampling = _status_mib("VmHWM") if reset else float("nan")
  compiled = decoding._sample_jit.lower(  # pylint: disable=protected-access
      module, params, enc, jax.random.key(0), np.float32(0.7), np.float32(1.0), np.int32(1),
      num_decodes=args.num_decodes, max_decode_length=args.length, top_k=40, use_top_p=True,
      use_eos=False, greedy=False).compile()
  mem = compiled.memory_analysis()
  stats = jax.devices()[0].memory_stats() or {}
  tokens = np.asarray(out.tokens)
  assert np.all(np.asarray(out.lengths) == args.length)
  np.savez(args.tokens_out, tokens=tokens, model_logps=np.asarray(out.model_logps))
  return dict(best_s=min(times), best_cpu_s=min(cpu_times), first_call_s=first_call,
              rss_loaded_mib=rss_loaded,
              peak_rss_mib=peak_with_compile, rss_before_mib=rss_before,
              peak_sampling_mib=peak_sampling,
              xla_temp_mib=getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20,
              xla_output_mib=getattr(mem, "output_size_in_bytes", float("nan")) / 2**20,
              peak_device_mib=stats.get("peak_bytes_in_use", float("nan")) / 2**20)


def run_hf(args) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  device = "cuda" if args.platform == "gpu" else "cpu"
  model = transformers.T5ForConditionalGeneration.from_pretrained(args.hf_dir).eval().to(
      device, getattr(torch, args.dtype))
  vocab = model.config.vocab_size
  enc = torch.as_tensor(_prompts(args.prompts, args.prompt_length, vocab), dtype=torch.long,
                        device=device)
  mask = (enc > 0).long()
  gen = dict(do_sample=True, num_return_sequences=args.num_decodes, top_k=40, temperature=0.7,
             top_p=1.0, max_new_tokens=args.length, min_new_tokens=args.length)
  rss_loaded = _status_mib("VmRSS")
  with torch.no_grad():
    torch.manual_seed(0)
    t0 = time.perf_counter()
    out = model.generate(input_ids=enc, attention_mask=mask, **gen)
    first_call = time.perf_counter() - t0
    rss_before = _status_mib("VmRSS")
    reset = _reset_peak_rss()
    times = []
    cpu_times = []
    for r in range(args.repeats):
      torch.manual_seed(r + 1)
      t0, c0 = time.perf_counter(), time.process_time()
      out = model.generate(input_ids=enc, attention_mask=mask, **gen)
      times.append(time.perf_counter() - t0)
      cpu_times.append(time.process_time() - c0)
    assert out.shape == (args.prompts * args.num_decodes, args.length + 1), out.shape
    peak_sampling = _status_mib("VmHWM") if reset else float("nan")
    peak = _peak_rss_mib()
    # Cross-check: HF's teacher-forced log-probs of the sequences rso_jax sampled.
    saved = np.load(args.tokens_out)
    labels = torch.as_tensor(saved["tokens"].reshape(-1, args.length), dtype=torch.long,
                             device=device)
    rows = torch.arange(labels.shape[0], device=device) // args.num_decodes
    logits = model(input_ids=enc[rows], attention_mask=mask[rows], labels=labels).logits
    logp = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]
    hf_logps = (logp * (labels > 0)).sum(-1).cpu().numpy()
  diff = float(np.max(np.abs(hf_logps - saved["model_logps"].reshape(-1))))
  return dict(best_s=min(times), best_cpu_s=min(cpu_times), first_call_s=first_call,
              rss_loaded_mib=rss_loaded,
              peak_rss_mib=peak, rss_before_mib=rss_before, peak_sampling_mib=peak_sampling,
              max_abs_logp_diff=diff,
              mean_logp=float(np.mean(hf_logps)))


def _torch_cuda() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top
    return torch.cuda.is_available()
  except ImportError:
    return False


def _child(side: str, args) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--child={side}", f"--hf_dir={args.hf_dir}",
         f"--tokens_out={args.tokens_out}", f"--prompts={args.prompts}",
         f"--prompt_length={args.prompt_length}", f"--num_decodes={args.num_decodes}",
         f"--length={args.length}", f"--repeats={args.repeats}", f"--threads={args.threads}",
         f"--platform={args.platform}", f"--dtype={args.dtype}"]
  env = dict(os.environ)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if args.platform == "cpu":
    # One CPU device (as HF uses) with the same thread budget as torch.
    env["XLA_FLAGS"] = (f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'} "
                        f"intra_op_parallelism_threads={args.threads}")
    env["OMP_NUM_THREADS"] = str(args.threads)
  env["JAX_PLATFORMS"] = "cpu" if args.platform == "cpu" else "cuda"
  res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if res.returncode:
    raise RuntimeError(f"{side} child failed:\n{res.stderr[-4000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="tiny,small")
  parser.add_argument("--prompts", type=int, default=2, help="B prompts")
  parser.add_argument("--prompt_length", type=int, default=32)
  parser.add_argument("--num_decodes", type=int, default=64, help="N samples per prompt")
  parser.add_argument("--length", type=int, default=32, help="tokens per sample")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls after the warm-up (default: 10 for tiny, 3 otherwise)")
  parser.add_argument("--threads", type=int, default=1,
                      help="CPU threads for both frameworks (torch.set_num_threads and XLA's "
                           "intra-op pool); 1 is the reproducible setting on a shared machine")
  parser.add_argument("--step_lengths", default=None,
                      help="comma-separated max_decode_lengths: rso_jax alone, ms per decode "
                      "step at each (is a step's cost flat in the decode length?)")
  parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                      help="gpu: both frameworks on the first GPU (JAX_PLATFORMS=cuda, torch "
                      "cuda; HF is skipped when torch has no CUDA)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="weights and activations of both frameworks")
  parser.add_argument("--child", choices=("jax", "hf"), default=None)
  parser.add_argument("--hf_dir", default=None)
  parser.add_argument("--tokens_out", default=None)
  args = parser.parse_args()
  if args.child:
    # Same cores for both frameworks: the first `threads` CPUs this process may use (without
    # pinning, XLA's hand-offs between its runtime threads wait on other jobs' time slices).
    if args.platform == "cpu":
      allowed = sorted(os.sched_getaffinity(0))
      os.sched_setaffinity(0, set(allowed[:max(1, args.threads)]))
    result = run_jax(args) if args.child == "jax" else run_hf(args)
    print(json.dumps(result))
    return

  num_tokens = args.prompts * args.num_decodes * args.length
  print(f"B={args.prompts} prompts x N={args.num_decodes} samples x L={args.length} tokens "
        f"= {num_tokens} tokens per call; T=0.7, top-k 40, EOS off; {cpu_description()}, "
        f"{args.threads} thread(s) per framework")
  repeats = args.repeats
  if args.step_lengths:
    _step_costs(args, [int(x) for x in args.step_lengths.split(",")])
    return
  for size in args.sizes.split(","):
    if size not in SIZES:
      raise ValueError(f"--sizes: unknown size {size!r}; choose from {sorted(SIZES)}")
    args.repeats = repeats or (10 if size == "tiny" else 3)
    with tempfile.TemporaryDirectory() as tmp:
      args.hf_dir = os.path.join(tmp, "hf")
      args.tokens_out = os.path.join(tmp, "jax_tokens.npz")
      make_hf_checkpoint(size, args.hf_dir)
      jax_res = _child("jax", args)
      if args.platform == "gpu" and not _torch_cuda():
        print(f"\n[{size}] rso_jax: {num_tokens / jax_res['best_s']:.1f} tok/s "
              f"({jax_res['best_s']:.3f} s/call), peak device memory "
              f"{jax_res['peak_device_mib']:.0f} MiB; HF skipped (torch has no CUDA here)")
        continue
      hf_res = _child("hf", args)
    jt, ht = num_tokens / jax_res["best_s"], num_tokens / hf_res["best_s"]
    jc, hc = num_tokens / jax_res["best_cpu_s"], num_tokens / hf_res["best_cpu_s"]
    print(f"\n[{size}] {SIZES[size]}")
    for name, res, tps, cps in (("rso_jax", jax_res, jt, jc), ("HF", hf_res, ht, hc)):
      print(f"  {name:8s}: {tps:9.1f} tok/s wall ({res['best_s']:.3f} s/call), {cps:9.1f} tok/s "
            f"of process CPU time; first call {res['first_call_s']:.1f} s")
      print(f"            RSS: loaded model {res['rss_loaded_mib']:.0f} MiB, peak incl. first "
            f"call {res['peak_rss_mib']:.0f} MiB, peak during timed calls "
            f"{res['peak_sampling_mib']:.0f} MiB "
            f"({res['peak_sampling_mib'] - res['rss_before_mib']:+.0f} over their start)")
    print(f"  rso_jax XLA buffers of the compiled sampler: temp {jax_res['xla_temp_mib']:.1f} MiB "
          f"(KV caches, logits, loop state), outputs {jax_res['xla_output_mib']:.2f} MiB")
    if args.platform == "gpu":
      print(f"  rso_jax peak device memory: {jax_res['peak_device_mib']:.0f} MiB")
    print(f"  ratio rso_jax / HF: {jt / ht:.2f}x wall, {jc / hc:.2f}x CPU time   (target >= 2x)")
    print(f"  check: max |log pi_jax - log pi_hf| over {args.prompts * args.num_decodes} sampled "
          f"sequences = {hf_res['max_abs_logp_diff']:.2e} (mean log pi {hf_res['mean_logp']:.1f})")


def _step_costs(args, lengths) -> None:
  """rso_jax alone: the best sampling call at each decode length, per step."""
  for size in args.sizes.split(","):
    args.repeats = args.repeats or 2
    with tempfile.TemporaryDirectory() as tmp:
      args.hf_dir = os.path.join(tmp, "hf")
      args.tokens_out = os.path.join(tmp, "jax_tokens.npz")
      make_hf_checkpoint(size, args.hf_dir)
      per_step = {}
      for length in lengths:
        args.length = length
        per_step[length] = 1e3 * _child("jax", args)["best_s"] / length
    print(f"\n[{size}] ms per decode step (B={args.prompts} x N={args.num_decodes} rows, prompt "
          f"{args.prompt_length} tokens):")
    for length, ms in per_step.items():
      print(f"  L={length:5d}: {ms:8.1f} ms/step   ({ms / per_step[lengths[0]]:.2f}x L={lengths[0]})")


if __name__ == "__main__":
  main()
