"""Sampling with a decoder-only model (Qwen2 / Llama): `decoding.sample` vs HF `generate`.

    python benchmarks/decoder_sampling.py [--arch qwen2|llama] [--hidden 512] [--layers 6]
        [--heads 8] [--kv_heads 2] [--head_dim 64] [--mlp 1536] [--vocab 16384] [--untied]
        [--prompts 2] [--prompt_length 96] [--ragged 0.5] [--num_decodes 64] [--length 48]
        [--repeats 3] [--threads 1] [--platform auto|cpu|gpu] [--dtype float32|bfloat16]
    python benchmarks/decoder_sampling.py --breakdown   # also: where rso_jax's time goes
    JAX_PLATFORMS=cpu python benchmarks/decoder_sampling.py   # CPU even where a GPU is present

One randomly initialized HF `Qwen2ForCausalLM` (or `LlamaForCausalLM`) created by transformers
(GQA: `--kv_heads` key/value heads; embeddings tied unless `--untied`) is saved to a temporary
directory; rso_jax reads its safetensors through `hf_decoder.config_from_hf` /
`params_from_hf`, so both sides run the same weights. Both sample N = 64 continuations of
exactly L tokens for each of B prompts with temperature 0.7 and top-k 40, EOS off (HF:
`min_new_tokens = max_new_tokens = L`; rso_jax: `eos_id=None`), so every call generates
B * N * L tokens. The prompts are the same token ids on both sides (rso id = HF id + 1), of
ragged lengths (`--ragged f`: prompt b has `prompt_length * (1 - f * b / (B - 1))` tokens):
left-padded with an attention mask for HF (what `generate` needs for a batch of decoder-only
prompts), right-padded after an EOS for rso_jax (the pipeline's prompt layout).

What each side does with the prompt: HF `generate(num_return_sequences=N)` repeats every
prompt N times and prefills B * N rows; rso_jax prefills the B prompts once and the N rows of a
prompt attend to that one copy of its keys/values. Both then run L - 1 KV-cached steps over
B * N rows with the same sampling law (pad/EOS handling aside: HF's min-length processor masks
the EOS id, rso_jax keeps it; the recipe is otherwise the same).

Device: `--platform auto` (default) runs both frameworks on the first GPU when torch sees CUDA
and `JAX_PLATFORMS` is not `cpu`, else both on the CPU. Each side runs in its own child process
(so one framework's memory does not hide the other's); on the CPU both are pinned to the same
`--threads` cores (default 1: reproducible on a shared machine). Each side reports:
  * tokens/s: B * N * L / the median wall time of `--repeats` calls after a warm-up call (for
    rso_jax the warm-up includes tracing and XLA compilation; HF's first call is its warm-up),
    and the same over the process CPU time of the call (`time.process_time`, all threads);
  * compile: rso_jax's first call minus its median call, and, separately, the time of an
    ahead-of-time `lower().compile()` of the same sampler (which also gives XLA's static
    buffer sizes: `memory_analysis()`);
  * memory, CPU: the child's resident set (whole process: interpreter, framework, weights,
    buffers) after loading the model; its peak through the warm-up (`ru_maxrss`, incl. XLA
    compilation for rso_jax); and the peak over the timed calls alone (VmHWM after a reset
    through /proc/self/clear_refs) with its growth over the RSS at their start, i.e. what a
    sampling call adds to a warm process. tracemalloc is not used: it cannot see XLA's or
    torch's native allocations;
  * memory, GPU: jax `memory_stats()['peak_bytes_in_use']` (process lifetime: weights, warm-up
    and timed calls; XLA's preallocation is off) and torch `max_memory_allocated` over the
    timed calls (after `reset_peak_memory_stats`) and over the whole process.
Correctness: HF teacher-forces `--check` of rso_jax's samples (the unpadded prompt followed by
the sampled tokens, spread over the prompts) and the largest |log π_rso_jax − log π_HF| over
those sequences is printed (the untempered model log-probs rso_jax reports as `model_logps`).
`--breakdown` also times each side at L = 1 (set-up, prefill and the first token: rso_jax's
sampler, HF's `generate`), hence the cost of each later decode step ((call - L=1 call) /
(L - 1)), and rso_jax's pieces alone: the prefill, and the step's output head, top-k and
logsumexp over the B * N rows as jitted jax ops.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decoding import (_peak_rss_mib, _reset_peak_rss, _status_mib,  # pylint: disable=g-import-not-at-top,wrong-import-position
                      cpu_description)

ARCHS = {"qwen2": "Qwen2", "llama": "Llama"}
HF_EOS = 1  # the HF ids of the random model's special tokens; prompts use ids >= 2
HF_PAD = 0


def _versions() -> str:
  out = []
  for name in ("jax", "jaxlib", "flax", "torch", "transformers"):
    try:
      out.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      out.append(f"{name} -")
  return ", ".join(out)


def prompt_lengths(args) -> list:
  b = args.prompts
  return [max(2, round(args.prompt_length * (1 - args.ragged * i / max(1, b - 1))))
          for i in range(b)]


def make_prompts(args, vocab: int) -> list:
  """B prompts of HF ids in [2, vocab) (no pad / EOS id), lengths `prompt_lengths`."""
  rng = np.random.RandomState(0)
  return [rng.randint(2, vocab, n).astype(np.int64) for n in prompt_lengths(args)]


def make_hf_model(args, seed: int = 0):
  """A randomly initialized HF Qwen2 / Llama causal LM of the flags' size."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  name = ARCHS[args.arch]
  config = getattr(transformers, f"{name}Config")(
      vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.mlp,
      num_hidden_layers=args.layers, num_attention_heads=args.heads,
      num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
      max_position_embeddings=max(4096, args.prompt_length + args.length),
      tie_word_embeddings=not args.untied, rms_norm_eps=1e-6, pad_token_id=HF_PAD,
      eos_token_id=HF_EOS, bos_token_id=HF_EOS, attention_dropout=0.0)
  torch.manual_seed(seed)
  return getattr(transformers, f"{name}ForCausalLM")(config)


# ------------------------------------------------------------------------------------------------
# rso_jax side.


def _median_calls(fn, repeats: int):
  times, cpu_times = [], []
  for r in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    fn(r)
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  return statistics.median(times), statistics.median(cpu_times), times


def run_jax(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from rso_jax import decoder_network, decoding, hf_decoder  # pylint: disable=g-import-not-at-top
  with open(os.path.join(args.hf_dir, "config.json")) as f:
    config = hf_decoder.config_from_hf(json.load(f))
  params = hf_decoder.params_from_hf(load_file(os.path.join(args.hf_dir, "model.safetensors")),
                                     config)
  if args.dtype != "float32":  # weights and activations in bfloat16 (accelerators)
    config = dataclasses.replace(config, dtype=args.dtype, param_dtype=args.dtype)
    params = jax.tree.map(lambda x: x.astype(args.dtype), params)
  module = decoder_network.DecoderTransformer(config)
  params = jax.device_put(params)
  saved = np.load(args.prompts_file)
  enc = jax.device_put(saved["rso_prompts"].astype(np.int32))  # [B, Lp + 1]
  kwargs = dict(num_decodes=args.num_decodes, max_decode_length=args.length, temperature=0.7,
                top_k=40, top_p=None, eos_id=None)

  def call(seed, length=args.length):
    out = decoding.sample(module, params, enc, jax.random.key(seed),
                          **dict(kwargs, max_decode_length=length))
    jax.block_until_ready(out)
    return out

  rss_loaded = _status_mib("VmRSS")
  t0 = time.perf_counter()
  out = call(0)
  first_call = time.perf_counter() - t0
  peak_with_compile = _peak_rss_mib()
  rss_before = _status_mib("VmRSS")
  reset = _reset_peak_rss()
  holder = {}
  median_s, median_cpu_s, times = _median_calls(
      lambda r: holder.__setitem__("out", call(r + 1)), args.repeats)
  out = holder.get("out", out)
  peak_sampling = _status_mib("VmHWM") if reset else float("nan")
  stats = jax.devices()[0].memory_stats() or {}
  res = dict(median_s=median_s, median_cpu_s=median_cpu_s, times=times,
             first_call_s=first_call, rss_loaded_mib=rss_loaded,
             peak_rss_mib=peak_with_compile, rss_before_mib=rss_before,
             peak_sampling_mib=peak_sampling,
             peak_device_mib=stats.get("peak_bytes_in_use", float("nan")) / 2**20,
             device=str(jax.devices()[0].device_kind))
  tokens = np.asarray(out.tokens)
  assert np.all(np.asarray(out.lengths) == args.length), np.asarray(out.lengths)
  assert tokens.min() > 0, "a sampled token is the pad id"
  np.savez(args.tokens_out, tokens=tokens, model_logps=np.asarray(out.model_logps))

  # Ahead-of-time compile of the same sampler: the compile time alone, and XLA's buffers.
  try:
    t0 = time.perf_counter()
    compiled = decoding._sample_jit.lower(  # pylint: disable=protected-access
        module, params, enc, jax.random.key(0), jnp.float32(0.7), jnp.float32(1.0),
        jnp.int32(decoding.EOS_ID), num_decodes=args.num_decodes,
        max_decode_length=args.length, top_k=40, use_top_p=True, use_eos=False,
        greedy=False).compile()
    res["aot_compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    res["xla_temp_mib"] = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20
    res["xla_output_mib"] = getattr(mem, "output_size_in_bytes", float("nan")) / 2**20
  except Exception as e:  # pylint: disable=broad-except
    res["aot_error"] = f"{type(e).__name__}: {e}"[:200]
  if args.breakdown:
    res["breakdown"] = _breakdown(args, module, params, enc, call, median_s, median_cpu_s)
  return res


def _clock(fn) -> tuple:
  """(wall s, process CPU s) of one call of `fn`."""
  t0, c0 = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - t0, time.process_time() - c0


def _median_clock(fn, reps: int) -> tuple:
  """Median (wall ms, process CPU ms) of `reps` calls of `fn`."""
  runs = [_clock(fn) for _ in range(reps)]
  return (1e3 * statistics.median(r[0] for r in runs),
          1e3 * statistics.median(r[1] for r in runs))


def _breakdown(args, module, params, enc, call, median_s, median_cpu_s) -> dict:
  """Where rso_jax's sampling time goes: prefill, first step, per decode step, top-k, head.

  Each entry is (wall ms, process CPU ms), medians."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rso_jax import kernels  # pylint: disable=g-import-not-at-top
  reps = max(3, args.repeats)

  def timed(fn, *xs):
    jax.block_until_ready(fn(*xs))  # compile
    return _median_clock(lambda: jax.block_until_ready(fn(*xs)), reps)

  prefill = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode"))
  out = {"prefill": timed(prefill, params, enc)}
  call(0, 1)  # compile the sampler at L = 1: prefill + the step at position 0 + setup
  out["sample_L1"] = _median_clock(lambda: call(1, 1), reps)
  out["step"] = tuple((1e3 * total - first) / max(1, args.length - 1)
                      for total, first in zip((median_s, median_cpu_s), out["sample_L1"]))
  rows = enc.shape[0] * args.num_decodes
  cfg = module.config
  logits = jax.random.normal(jax.random.key(1), (rows, cfg.num_logits), jnp.float32)
  out["top_k"] = timed(jax.jit(lambda x: kernels.top_k(x, 40)), logits)
  out["lax_top_k"] = timed(jax.jit(lambda x: jax.lax.top_k(x, 40)), logits)
  h = jax.random.normal(jax.random.key(2), (rows, 1, cfg.emb_dim), cfg.activation_dtype)
  head = (params["token_embedder"]["embedding"].T if cfg.tie_word_embeddings
          else params["logits_dense"]["kernel"])
  out["head"] = timed(jax.jit(lambda x, w: jnp.einsum("rle,ev->rlv", x, w)), h,
                      jnp.asarray(head))
  out["logsumexp"] = timed(jax.jit(lambda x: jax.nn.logsumexp(x, -1)), logits)
  return out


# ------------------------------------------------------------------------------------------------
# HF side.


def run_hf(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  device = "cuda" if args.platform == "gpu" else "cpu"
  model = transformers.AutoModelForCausalLM.from_pretrained(args.hf_dir).eval().to(
      device, getattr(torch, args.dtype))
  saved = np.load(args.prompts_file)
  ids = torch.as_tensor(saved["hf_prompts"], dtype=torch.long, device=device)  # left-padded
  mask = torch.as_tensor(saved["hf_mask"], dtype=torch.long, device=device)
  gen = dict(do_sample=True, num_return_sequences=args.num_decodes, top_k=40, temperature=0.7,
             top_p=1.0, max_new_tokens=args.length, min_new_tokens=args.length,
             pad_token_id=HF_PAD, eos_token_id=HF_EOS)
  cuda = device == "cuda"

  def call(seed):
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, **gen)
    if cuda:
      torch.cuda.synchronize()
    return out

  rss_loaded = _status_mib("VmRSS")
  with torch.no_grad():
    t0 = time.perf_counter()
    out = call(0)
    first_call = time.perf_counter() - t0
    rss_before = _status_mib("VmRSS")
    reset = _reset_peak_rss()
    warm_gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    if cuda:
      torch.cuda.reset_peak_memory_stats()
    holder = {}
    median_s, median_cpu_s, times = _median_calls(
        lambda r: holder.__setitem__("out", call(r + 1)), args.repeats)
    out = holder.get("out", out)
    peak_sampling = _status_mib("VmHWM") if reset else float("nan")
    peak = _peak_rss_mib()
    timed_gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    assert out.shape == (args.prompts * args.num_decodes, ids.shape[1] + args.length), out.shape

    # Cross-check: HF's teacher-forced log-probs of sequences rso_jax sampled.
    jax_saved = np.load(args.tokens_out)
    tokens = jax_saved["tokens"].reshape(-1, args.length) - 1  # rso ids -> HF ids
    jax_logps = jax_saved["model_logps"].reshape(-1)
    rows = np.unique(np.linspace(0, tokens.shape[0] - 1, args.check).round().astype(int))
    diffs, hf_logps = [], []
    for row in rows:
      prompt = saved["hf_prompts"][row // args.num_decodes]
      prompt = prompt[saved["hf_mask"][row // args.num_decodes] > 0]
      seq = torch.as_tensor(np.concatenate([prompt, tokens[row]])[None], dtype=torch.long,
                            device=device)
      logits = model(input_ids=seq).logits.float()[0, len(prompt) - 1:-1]  # predicts the response
      lp = torch.log_softmax(logits, -1).gather(
          -1, seq[0, len(prompt):, None])[:, 0].sum().item()
      hf_logps.append(lp)
      diffs.append(abs(lp - float(jax_logps[row])))
    breakdown = None
    if args.breakdown:  # generate at L = 1: set-up, the prefill of the B * N repeated prompts
      # (logits of their last token only) and the first sampled token
      one = dict(gen, max_new_tokens=1, min_new_tokens=1)

      def first_token():
        torch.manual_seed(0)
        model.generate(input_ids=ids, attention_mask=mask, **one)
        if cuda:
          torch.cuda.synchronize()

      first_token()
      l1 = _median_clock(first_token, max(3, args.repeats))
      breakdown = {"sample_L1": l1, "step": tuple(
          (1e3 * total - p) / max(1, args.length - 1)
          for total, p in zip((median_s, median_cpu_s), l1))}
  return dict(median_s=median_s, median_cpu_s=median_cpu_s, times=times,
              first_call_s=first_call, rss_loaded_mib=rss_loaded, peak_rss_mib=peak,
              rss_before_mib=rss_before, peak_sampling_mib=peak_sampling,
              peak_gpu_timed_mib=timed_gpu,
              peak_gpu_mib=(max(warm_gpu, torch.cuda.max_memory_allocated() / 2**20) if cuda
                            else float("nan")),
              max_abs_logp_diff=float(max(diffs)), checked=len(rows),
              mean_logp=float(np.mean(hf_logps)), breakdown=breakdown,
              device=torch.cuda.get_device_name(0) if cuda else "cpu")


# ------------------------------------------------------------------------------------------------
# Driver.


def _child(side: str, args) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--child={side}"] + [
      f"--{k}={v}" for k, v in vars(args).items()
      if k not in ("child", "untied", "breakdown") and v is not None]
  if args.breakdown:
    cmd.append("--breakdown")
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if args.platform == "cpu":
    # One CPU device (as HF uses) with the same thread budget as torch.
    env["XLA_FLAGS"] = (f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'} "
                        f"intra_op_parallelism_threads={args.threads}")
    env["OMP_NUM_THREADS"] = str(args.threads)
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
  else:
    env["JAX_PLATFORMS"] = "cuda"
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if res.returncode:
    raise RuntimeError(f"{side} child failed:\n{res.stderr[-4000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def _pick_platform(requested: str) -> str:
  if requested != "auto":
    return requested
  if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return "cpu"
  try:
    import torch  # pylint: disable=g-import-not-at-top
    return "gpu" if torch.cuda.is_available() else "cpu"
  except ImportError:
    return "cpu"


def _write_prompts(args, path: str) -> None:
  prompts = make_prompts(args, args.vocab)
  lp = max(len(p) for p in prompts)
  hf = np.full((len(prompts), lp), HF_PAD, np.int64)
  hf_mask = np.zeros((len(prompts), lp), np.int64)
  rso = np.zeros((len(prompts), lp + 1), np.int32)
  for i, p in enumerate(prompts):
    hf[i, lp - len(p):] = p  # left-padded for HF generate
    hf_mask[i, lp - len(p):] = 1
    rso[i, :len(p)] = p + 1  # rso ids = HF ids + 1, then EOS, then 0-padding
    rso[i, len(p)] = HF_EOS + 1
  np.savez(path, hf_prompts=hf, hf_mask=hf_mask, rso_prompts=rso)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arch", choices=sorted(ARCHS), default="qwen2")
  parser.add_argument("--hidden", type=int, default=512)
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--kv_heads", type=int, default=2)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--mlp", type=int, default=1536, help="intermediate size")
  parser.add_argument("--vocab", type=int, default=16384)
  parser.add_argument("--untied", action="store_true", help="untied output head")
  parser.add_argument("--prompts", type=int, default=2, help="B prompts")
  parser.add_argument("--prompt_length", type=int, default=96, help="the longest prompt")
  parser.add_argument("--ragged", type=float, default=0.5,
                      help="the last prompt is (1 - ragged) * prompt_length tokens, the others "
                      "in between (0 = all the same length)")
  parser.add_argument("--num_decodes", type=int, default=64, help="N samples per prompt")
  parser.add_argument("--length", type=int, default=48, help="L tokens per sample")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up")
  parser.add_argument("--threads", type=int, default=1,
                      help="CPU threads for both frameworks (torch.set_num_threads and XLA's "
                      "intra-op pool); 1 is the reproducible setting on a shared machine")
  parser.add_argument("--platform", choices=("auto", "cpu", "gpu"), default="auto")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="weights and activations of both frameworks")
  parser.add_argument("--check", type=int, default=8,
                      help="rso_jax samples HF teacher-forces for the log-prob check")
  parser.add_argument("--breakdown", action="store_true",
                      help="also time rso_jax's prefill, per-step cost, top-k and head")
  parser.add_argument("--child", choices=("jax", "hf"), default=None)
  parser.add_argument("--hf_dir", default=None)
  parser.add_argument("--prompts_file", default=None)
  parser.add_argument("--tokens_out", default=None)
  args = parser.parse_args()
  if not 0 <= args.ragged < 1:
    parser.error("--ragged must be in [0, 1)")
  if args.child:
    if args.platform == "cpu":  # the same cores for both frameworks
      allowed = sorted(os.sched_getaffinity(0))
      os.sched_setaffinity(0, set(allowed[:max(1, args.threads)]))
    result = run_jax(args) if args.child == "jax" else run_hf(args)
    print(json.dumps(result))
    return

  args.platform = _pick_platform(args.platform)
  b, n, length = args.prompts, args.num_decodes, args.length
  num_tokens = b * n * length
  lens = prompt_lengths(args)
  model = make_hf_model(args)
  n_params = sum(p.numel() for p in model.parameters())
  where = (cpu_description() + f", {args.threads} thread(s) per framework"
           if args.platform == "cpu" else "GPU (both frameworks), host " + cpu_description())
  print(f"{ARCHS[args.arch]} decoder ({n_params / 1e6:.1f}M params: hidden {args.hidden}, "
        f"{args.layers} layers, {args.heads} heads / {args.kv_heads} kv heads x {args.head_dim}, "
        f"mlp {args.mlp}, vocab {args.vocab}, {'untied' if args.untied else 'tied'}), "
        f"{args.dtype}; B={b} prompts of {'/'.join(map(str, lens))} tokens x N={n} samples x "
        f"L={length} tokens = {num_tokens} tokens per call; T=0.7, top-k 40, EOS off")
  print(f"{where}; {_versions()}", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    args.hf_dir = os.path.join(tmp, "hf")
    args.prompts_file = os.path.join(tmp, "prompts.npz")
    args.tokens_out = os.path.join(tmp, "jax_tokens.npz")
    import transformers  # pylint: disable=g-import-not-at-top
    transformers.utils.logging.disable_progress_bar()
    model.eval().save_pretrained(args.hf_dir, safe_serialization=True)
    del model
    _write_prompts(args, args.prompts_file)
    jax_res = _child("jax", args)
    if args.platform == "gpu" and not _torch_cuda():
      print(f"rso_jax: {num_tokens / jax_res['median_s']:.1f} tok/s; HF skipped (torch has no "
            "CUDA here)")
      return
    hf_res = _child("hf", args)
  _report(args, num_tokens, jax_res, hf_res)


def _torch_cuda() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top
    return torch.cuda.is_available()
  except ImportError:
    return False


def _report(args, num_tokens, jax_res, hf_res) -> None:
  jt, ht = num_tokens / jax_res["median_s"], num_tokens / hf_res["median_s"]
  jc, hc = num_tokens / jax_res["median_cpu_s"], num_tokens / hf_res["median_cpu_s"]
  print(f"device: rso_jax {jax_res['device']}, HF {hf_res['device']}")
  for name, res, tps, cps in (("rso_jax", jax_res, jt, jc), ("HF", hf_res, ht, hc)):
    calls = ", ".join(f"{t:.2f}" for t in res["times"])
    print(f"  {name:8s}: {tps:9.1f} tok/s wall (median {res['median_s']:.3f} s/call of "
          f"[{calls}]), {cps:9.1f} tok/s of process CPU time; first call "
          f"{res['first_call_s']:.1f} s")
    if args.platform == "cpu":
      print(f"            RSS: loaded model {res['rss_loaded_mib']:.0f} MiB, peak incl. first "
            f"call {res['peak_rss_mib']:.0f} MiB, peak during timed calls "
            f"{res['peak_sampling_mib']:.0f} MiB "
            f"({res['peak_sampling_mib'] - res['rss_before_mib']:+.0f} over their start)")
  compile_s = jax_res["first_call_s"] - jax_res["median_s"]
  aot = (f"{jax_res['aot_compile_s']:.1f} s" if "aot_compile_s" in jax_res
         else f"n/a ({jax_res.get('aot_error')})")
  print(f"  rso_jax compile: first call - median call = {compile_s:.1f} s; AOT lower+compile "
        f"{aot}; XLA buffers of the sampler: temp {jax_res.get('xla_temp_mib', float('nan')):.1f}"
        f" MiB (KV caches, logits, loop state), outputs "
        f"{jax_res.get('xla_output_mib', float('nan')):.2f} MiB")
  if args.platform == "gpu":
    print(f"  peak GPU memory: rso_jax {jax_res['peak_device_mib']:.0f} MiB (peak_bytes_in_use, "
          f"whole process), HF {hf_res['peak_gpu_timed_mib']:.0f} MiB over the timed calls / "
          f"{hf_res['peak_gpu_mib']:.0f} MiB whole process (max_memory_allocated)")
  print(f"  check: max |log pi_rso_jax - log pi_HF| over {hf_res['checked']} of rso_jax's "
        f"samples = {hf_res['max_abs_logp_diff']:.2e} (mean log pi {hf_res['mean_logp']:.1f})")
  bd, hbd = jax_res.get("breakdown"), hf_res.get("breakdown")
  ms = lambda x: f"{x[0]:.1f} / {x[1]:.1f}"
  if bd:
    print("  breakdown, ms wall / process CPU (medians):")
    print(f"    rso_jax: prefill of the {args.prompts} prompts {ms(bd['prefill'])}; the sampler "
          f"at L=1 (prefill + first step + set-up) {ms(bd['sample_L1'])}; each later step "
          f"{ms(bd['step'])}")
    print(f"             as jitted ops alone over the {args.prompts * args.num_decodes} rows: "
          f"output head {ms(bd['head'])}, two-stage top-k {ms(bd['top_k'])} (lax.top_k "
          f"{ms(bd['lax_top_k'])}), logsumexp {ms(bd['logsumexp'])}")
  if bd and hbd:
    rows = args.prompts * args.num_decodes
    print(f"    HF:      generate at L=1 (set-up + prefill of the {rows} "
          f"repeated prompts + first step) {ms(hbd['sample_L1'])}; each later step "
          f"{ms(hbd['step'])}")
    print(f"    ratio HF / rso_jax (process CPU): at L=1 "
          f"{hbd['sample_L1'][1] / bd['sample_L1'][1]:.1f}x, per later step "
          f"{hbd['step'][1] / bd['step'][1]:.2f}x")
  if args.platform == "cpu":
    mem = (f"peak RSS delta over timed calls rso_jax "
           f"{jax_res['peak_sampling_mib'] - jax_res['rss_before_mib']:+.0f} MiB / HF "
           f"{hf_res['peak_sampling_mib'] - hf_res['rss_before_mib']:+.0f} MiB")
  else:
    mem = (f"peak GPU rso_jax {jax_res['peak_device_mib']:.0f} MiB / HF "
           f"{hf_res['peak_gpu_mib']:.0f} MiB")
  print(f"RESULT decoder_sampling: rso_jax {jt:.1f} tok/s, HF {ht:.1f} tok/s, ratio "
        f"{jt / ht:.2f}x wall ({jc / hc:.2f}x CPU time; target >= 2x), compile {compile_s:.1f} s, "
        f"{mem}, max |dlogp| {hf_res['max_abs_logp_diff']:.1e}")


if __name__ == "__main__":
  main()
