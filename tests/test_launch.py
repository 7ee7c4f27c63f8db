"""launch/: the sweep (grid of gin overrides -> runs) and the launch scripts' DRY_RUN."""

import importlib.util
import inspect
import math
import json
import os
import shlex
import subprocess
import sys

import gin
import jax
import pytest

from rso_jax import cli, models, partitioning, pipeline, sample, trainer
from rso_jax import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "launch", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


sweep = _load("sweep")
memory = _load("memory")
paper_table = _load("paper_table")

BETA = "sample/sample.sample_configured.beta"
GRID = [f"{BETA}=[0.05, 0.5, 5.0]", "LOSS=['hinge_norm', 'sigmoid_norm']"]


def test_beta_by_loss_grid_is_six_valid_configurations():
  """Every command is a configuration rso_jax's CLI accepts, with that cell's β and loss and a
  policy directory of its own."""
  cmds = sweep.commands(["rso_hinge.gin"], [sweep.parse_grid(g) for g in GRID],
                        ["--gin.RUN_DIR='/tmp/sweep'"])
  assert len(cmds) == 6
  seen, names = set(), set()
  for cmd in cmds:
    assert cmd[:3] == [sys.executable, "-m", "rso_jax.train"]
    flags = cli.parse_flags(cmd[3:])
    cli.configure_gin(flags.files, flags.bindings, [os.path.join(REPO, "gin")])
    beta = gin.query_parameter(f"{BETA}")
    loss = gin.query_parameter("%LOSS")
    seen.add((beta, loss))
    names.add(gin.query_parameter("%POLICY_NAME"))
    assert gin.query_parameter("%RUN_DIR") == "/tmp/sweep"
  gin.clear_config()
  assert seen == {(b, l) for b in (0.05, 0.5, 5.0) for l in ("hinge_norm", "sigmoid_norm")}
  assert len(names) == 6 and "sweep-beta_0.05-LOSS_sigmoid_norm" in names


def test_dry_run_prints_and_runs_nothing(capsys):
  rc = sweep.main(["--gin_file=gin/rso_hinge.gin", *(f"--grid={g}" for g in GRID), "--dry_run",
                   "--", "--gin.RUN_DIR=\"runs/x\""])
  lines = capsys.readouterr().out.splitlines()
  assert rc == 0 and len(lines) == 6
  assert lines[0].startswith("[1/6] ") and "rso_jax.train --gin_file=gin/rso_hinge.gin" in lines[0]
  argv = shlex.split(lines[-1].split(" ", 1)[1])
  assert argv[-3:] == [f"--gin.{BETA}=5.0", '--gin.LOSS="sigmoid_norm"',
                       '--gin.POLICY_NAME="sweep-beta_5.0-LOSS_sigmoid_norm"']
  assert '--gin.RUN_DIR="runs/x"' in argv


def test_runs_go_one_after_another_and_stop_at_the_first_failure(tmp_path, capsys):
  log = tmp_path / "log"
  script = (f"import sys; open({str(log)!r}, 'a').write(sys.argv[-1] + chr(10)); "
            "sys.exit(3 if 'sigmoid' in ' '.join(sys.argv) else 0)")
  rc = sweep.main(["--gin_file=gin/rso_hinge.gin", f"--grid={GRID[1]}",
                   "--grid=GAMMA=[0.05, 0.5]",
                   f"--launcher={shlex.quote(sys.executable)} -c {shlex.quote(script)}"])
  assert rc == 3
  ran = log.read_text().splitlines()
  assert ran == ['--gin.POLICY_NAME="sweep-LOSS_hinge_norm-GAMMA_0.05"',
                 '--gin.POLICY_NAME="sweep-LOSS_hinge_norm-GAMMA_0.5"',
                 '--gin.POLICY_NAME="sweep-LOSS_sigmoid_norm-GAMMA_0.05"']
  assert "run 3/4 failed with exit status 3; the 1 after it were not started" in (
      capsys.readouterr().err)


@pytest.mark.parametrize("grid,message", [
    ("LOSS=hinge_norm", "not a literal list"),
    ("LOSS=[]", "non-empty list"),
    ("LOSS=['a', 'a']", "repeated"),
    ("bad name=[1]", "expected BINDING"),
])
def test_bad_grid_is_one_line_and_exit_2(grid, message, capsys):
  assert sweep.main(["--gin_file=gin/rso_hinge.gin", f"--grid={grid}", "--dry_run"]) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1


def test_launch_scripts_print_their_commands_with_dry_run():
  """The sweep prefixes a launch script; DRY_RUN=1 shows what each host would run."""
  cmds = sweep.commands(["gin/rso_hinge.gin"], [sweep.parse_grid(GRID[1])], [],
                        launcher="bash launch/tpu_pod.sh my-tpu us-central2-b")
  assert cmds[0][:6] == ["bash", "launch/tpu_pod.sh", "my-tpu", "us-central2-b",
                         "gin/rso_hinge.gin", '--gin.LOSS="hinge_norm"']
  env = dict(os.environ, DRY_RUN="1")
  out = subprocess.run(cmds[0], cwd=REPO, env=env, capture_output=True, text=True, check=True)
  assert out.stdout.startswith("gcloud compute tpus tpu-vm ssh my-tpu --zone us-central2-b "
                               "--worker=all --command")
  assert "RSO_JAX_DISTRIBUTED=1 python3 -m rso_jax.train --gin_file=gin/rso_hinge.gin" in out.stdout
  assert "hinge_norm" in out.stdout and "sweep-LOSS_hinge_norm" in out.stdout
  env.update(COORDINATOR="host0:1234", NUM_NODES="2", NODE_RANK="1")
  out = subprocess.run(["bash", "launch/multinode_gpu.sh", "gin/rso_hinge.gin",
                        "--gin.LOSS='sigmoid_norm'"], cwd=REPO, env=env, capture_output=True,
                       text=True, check=True)
  assert out.stdout.startswith("JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 "
                               "JAX_PROCESS_ID=1 python3 -m rso_jax.train")
  assert "sigmoid_norm" in out.stdout


def test_gpu_slurm_script_with_dry_run(tmp_path):
  """launch/gpu_slurm.sh: the batch script it would submit (one task per node, SIGTERM before
  the time limit, requeue on exit 143) is valid bash and runs the given gin file + overrides."""
  env = dict(os.environ, DRY_RUN="1", NODES="4", GPUS_PER_NODE="8", PARTITION="gpu",
             TIME="02:00:00")
  out = subprocess.run(["bash", "launch/gpu_slurm.sh", "gin/experiments/embedded.gin",
                        "--gin.LOSS='sigmoid_norm'", "--gin.RUN_DIR=\"/shared/run a\""],
                       cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
  for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
               "#SBATCH --time=02:00:00", "#SBATCH --partition=gpu", "#SBATCH --signal=TERM@120",
               "#SBATCH --requeue"):
    assert line in out.splitlines()
  assert "#SBATCH --account" not in out
  script = tmp_path / "job.sh"
  script.write_text(out)
  subprocess.run(["bash", "-n", str(script)], check=True)
  # The command each node runs, split as bash would split it.
  srun = out[out.index("srun "):].replace("\\\n", "").split(" || rc=")[0]
  words = shlex.split(srun)
  assert words[:6] == ["srun", "--kill-on-bad-exit=1", "env", "RSO_JAX_DISTRIBUTED=1", "python3",
                       "-m"]
  assert words[6:] == ["rso_jax.train", "--gin_file=gin/experiments/embedded.gin",
                       "--gin.MESH_SHAPE=(-1, 8, 1)", "--gin.LOSS='sigmoid_norm'",
                       '--gin.RUN_DIR="/shared/run a"']
  usage = subprocess.run(["bash", "launch/gpu_slurm.sh"], cwd=REPO, capture_output=True,
                         text=True)
  assert usage.returncode == 2 and "usage:" in usage.stderr


def test_memory_counts_t5_v1_1_base_and_shards_like_the_trainer():
  """T5 v1.1 base has HF's 247,577,856 params; per-device bytes on an abstract mesh are what
  the trainer's shardings put on each device of a real mesh."""
  base = memory.size_config("base")
  n, params, opt = memory.device_bytes(base, (1, 1, 1))
  assert n == 247_577_856  # google/t5-v1_1-base in transformers
  assert params == 4 * n and 2 * params <= opt <= 2 * params + 64  # AdamW: two moments + count
  n8, params8, _ = memory.device_bytes(base, (1, 8, 1))
  assert n8 == n and params / 8 <= params8 < params / 8 * 1.01  # only norms, biases replicated

  tiny = memory.size_config("tiny")
  _, want_params, want_opt = memory.device_bytes(tiny, (1, 4, 2))
  model = models.PolicyModel(tiny)
  shapes = model.input_shapes(2, {"inputs": 8, "targets": 8})
  boxed = jax.eval_shape(lambda: model.get_initial_variables(jax.random.key(0), shapes))["params"]
  optimizer = trainer.make_optimizer("adamw", 1e-4)
  abstract_opt = jax.eval_shape(optimizer.init, trainer.unbox(boxed))
  mesh = partitioning.create_mesh((1, 4, 2))
  shardings = trainer.state_shardings(boxed, abstract_opt, mesh)
  init = jax.jit(lambda k: trainer.unbox(model.get_initial_variables(k, shapes)["params"]),
                 out_shardings=shardings.params)
  real = init(jax.random.key(0))
  state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(real)
  on_device0 = lambda tree: sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))
  assert on_device0(real) == want_params and on_device0(state) == want_opt
  assert memory.activation_bytes(tiny, (1, 4, 2), 64, 32, 32) == pytest.approx(
      2 * memory.activation_bytes(tiny, (1, 8, 2), 64, 32, 32))


# ----------------------------------------------------------------------------- paper_table.py
def test_paper_table_cells_are_the_papers_table_one_per_seed():
  """3 settings x 3 losses per seed, seed-major; each command is a configuration the CLI
  accepts with that cell's data, loss, seed and directory ('direct' trains on D_hf)."""
  cells = paper_table.cells([0, 1, 2], baselines=[])
  assert len(cells) == 27 and [c.seed for c in cells] == [0] * 9 + [1] * 9 + [2] * 9
  seen = set()
  for cell in cells[:9]:
    cmd = cell.argv("/tmp/study", "rso_hinge.gin", ["--gin.TRAIN_STEPS=7"])
    assert cmd[:3] == [sys.executable, "-m", "rso_jax.train"] and cmd[-1] == "--gin.TRAIN_STEPS=7"
    flags = cli.parse_flags(cmd[3:])
    cli.configure_gin(flags.files, flags.bindings, [os.path.join(REPO, "gin")])
    assert not cli.unread_macros()
    policy = pipeline.stage_bindings(train_lib.train, "")  # the unscoped policy training
    task = policy["mixture_or_task_name"]
    setting = "direct" if task == "synthetic_dhf" else gin.query_parameter("%DATA_SETTING")
    assert task == ("synthetic_dhf" if cell.setting == "direct" else "rso_pairs")
    # sft, collect (on-policy pairs for the reward model), reward, judge (none on the embedded
    # task)[, reward quality, sample]
    assert len(policy["prerequisites"]) == (4 if cell.setting == "direct" else 6)
    seen.add((setting, gin.query_parameter("%LOSS"), gin.query_parameter("%RANDOM_SEED"),
              gin.query_parameter("%RUN_DIR"), gin.query_parameter("%POLICY_NAME"),
              gin.query_parameter("%TRAIN_STEPS")))
  gin.clear_config()
  assert seen == {(st, l, 0, "/tmp/study/seed0", f"{st}-{l}", 7)
                  for st in paper_table.SETTINGS for l in paper_table.LOSSES}


@pytest.mark.parametrize("baseline,num_samples", [("raft", 1), ("rest", 64)])
def test_paper_table_baselines_are_sft_on_the_sampling_stages_selection(baseline, num_samples):
  """RAFT / ReST cells: the SFT loss (Seq2SeqModel) from pi_sft on what the sampling stage
  selects with that data setting, after each seed's table cells."""
  cells = paper_table.cells([3], settings=["direct"], losses=["hinge"])
  assert [c.name for c in cells] == ["direct-hinge", "raft", "rest"]
  cell = [c for c in cells if c.setting == baseline][0]
  flags = cli.parse_flags(cell.argv("/tmp/study", "rso_hinge.gin")[3:])
  cli.configure_gin(flags.files, flags.bindings, [os.path.join(REPO, "gin")])
  assert not cli.unread_macros()
  policy = pipeline.stage_bindings(train_lib.train, "")
  assert type(policy["model"]).__name__ == "Seq2SeqModel"
  assert policy["initial_checkpoint_path"] == "/tmp/study/seed3/sft"
  draw = pipeline.stage_bindings(sample.sample_configured, "sample")
  assert (draw["data_setting"], draw["num_samples"], draw["seed"]) == (baseline, num_samples, 3)
  assert gin.query_parameter("%POLICY_NAME") == baseline
  gin.clear_config()


def test_paper_table_mean_and_standard_error_match_the_statistics_module():
  import statistics
  xs = [0.25, 0.5, 0.9]
  mean, se = paper_table.mean_stderr(xs)
  assert mean == pytest.approx(statistics.mean(xs))
  assert se == pytest.approx(statistics.stdev(xs) / len(xs) ** 0.5)
  assert paper_table.mean_stderr([0.3]) == (0.3, None)
  assert paper_table.mean_stderr([]) == (None, None)


def _fake_cell_runner(calls, fail_on=None):
  """Stands in for `python -m rso_jax.train`: writes the cell's evaluation, with win rates and
  KL that depend on the cell and its seed, as the pipeline's EvaluateStage would."""

  def run(argv):
    calls.append(argv)
    opts = dict(a[len("--gin."):].split("=", 1) for a in argv if a.startswith("--gin."))
    run_dir, name = json.loads(opts["RUN_DIR"]), json.loads(opts["POLICY_NAME"])
    seed = int(opts["RANDOM_SEED"])
    rc = 5 if fail_on == (name, seed) else 0
    if not rc:
      os.makedirs(os.path.join(run_dir, name), exist_ok=True)
      gamma = float(opts.get("GAMMA", "0.05"))  # the experiment's GAMMA unless overridden
      with open(os.path.join(run_dir, name, "config.gin"), "w") as f:  # as the trainer writes
        f.write(f"LOSS = 'x'\nGAMMA = {gamma!r}\n")
      # The unchanged rso cells +0.5 (ablations and the gamma sweep: "<setting>-<loss>-<name>");
      # an overridden gamma +0.2 on golden; KL (1 + seed) * sqrt(0.05 / gamma).
      x = 0.1 * seed + (0.5 if name.startswith("rso") and name.count("-") == 1 else 0.0)
      shift = 0.2 if "GAMMA" in opts else 0.0
      res = {"vs_sft_targets/proxy": 0.2 + x, "vs_sft_targets/golden": 0.1 + x + shift,
             "vs_sft/proxy": 0.3, "vs_sft/golden": 0.4}
      last = {"name": name, "results": {"greedy": dict(res, **{
          "sft_vs_sft_targets/golden": 0.3 + 0.1 * seed}), "sample": dict(res, **{
              "golden/policy": 0.5 + x + shift, "golden/sft": 0.4 + 0.1 * seed})},
              "kl/mean": (1.0 + seed) * (0.05 / gamma) ** 0.5}
      with open(os.path.join(run_dir, f"eval_{name}.json"), "w") as f:
        json.dump(last, f)
      # EvaluateStage's every-checkpoint record: step 100 has the better proxy win rate.
      early = json.loads(json.dumps(last))
      early["results"]["greedy"]["vs_sft_targets/proxy"] += 0.05
      early["kl/mean"] = 0.5
      with open(os.path.join(run_dir, f"eval_{name}_checkpoints.json"), "w") as f:
        json.dump({"steps": {"100": early, "200": last}, "selected_step": 100}, f)
    return subprocess.CompletedProcess(argv, rc)

  return run


def test_paper_table_runs_reuses_and_reports_mean_and_stderr(tmp_path, capsys):
  root, out = str(tmp_path / "runs"), str(tmp_path / "table.md")
  cells = paper_table.cells([0, 1], settings=["direct", "rso_sample_rank"], losses=["hinge"],
                            baselines=["raft"])
  os.makedirs(os.path.join(root, "seed1", "reward_bt"))
  with open(os.path.join(root, "seed1", "reward_bt", "reward_quality.json"), "w") as f:
    json.dump({"metrics": {"sft_samples/accuracy_golden": 0.531,
                           "sft_samples/within_prompt_spearman": 0.07,
                           "accuracy_golden": 0.78}}, f)
  calls = []
  frontier = tmp_path / "frontier.png"
  rc = paper_table.run_study(cells, root, "rso_hinge.gin", [], out, "greedy", "CMD",
                             runner=_fake_cell_runner(calls), frontier=str(frontier))
  assert rc == 0 and len(calls) == 6
  assert all("--gin.EVAL_EVERY_CHECKPOINT=True" in c for c in calls)
  assert frontier.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  text = open(out).read()
  # The selected checkpoint (step 100): proxy 5 points higher, KL 0.5.
  assert "| hinge | 30.0 ± 5.0 / 15.0 ± 5.0 | 80.0 ± 5.0 / 65.0 ± 5.0 |" in text
  assert "| hinge | 0.50 ± 0.00 | 0.50 ± 0.00 |" in text and "| hinge | 100 ± 0 | 100 ± 0 |" in text
  # vs the SFT targets, seeds 0 / 1: direct proxy 20 / 30 % -> 25.0 ± 5.0, golden 10 / 20 %;
  # rso proxy 70 / 80 %, golden 60 / 70 %.
  assert "| hinge | 25.0 ± 5.0 / 15.0 ± 5.0 | 75.0 ± 5.0 / 65.0 ± 5.0 |" in text
  assert "| hinge | 1.50 ± 0.50 | 1.50 ± 0.50 |" in text  # KL of seeds 0 and 1
  assert "seed 1: reward_bt: accuracy 0.531" in text and "seed 0: not measured" in text
  assert ("| raft | 25.0 ± 5.0 / 15.0 ± 5.0 | 30.0 ± 0.0 / 40.0 ± 0.0 | 1.50 ± 0.50 | "
          "30.0 ± 5.0 / 15.0 ± 5.0 | 2 |") in text
  assert "cells finished: 6/6" in text and "`CMD`" in text
  # Rerun: every cell is reused, nothing runs, the same table.
  calls.clear()
  assert paper_table.run_study(cells, root, "rso_hinge.gin", [], out, "greedy", "CMD",
                               runner=_fake_cell_runner(calls), frontier=str(frontier)) == 0
  assert calls == [] and open(out).read() == text
  # Other flags for the same cells: the finished ones are refused, not reported under them.
  with pytest.raises(paper_table.StudyError, match="remove .*seed0 or use another --run_root"):
    paper_table.run_study(cells, root, "rso_hinge.gin", ["--gin.GAMMA=0.5"], out, "greedy",
                          "CMD", runner=_fake_cell_runner(calls))
  assert calls == []


def test_paper_table_stops_at_a_failing_cell_and_resumes_after_it(tmp_path, capsys):
  root, out = str(tmp_path / "runs"), str(tmp_path / "table.md")
  cells = paper_table.cells([0], settings=["sft_sample_rank"], baselines=[])
  calls = []
  rc = paper_table.run_study(cells, root, "rso_hinge.gin", [], out, "greedy", "CMD",
                             runner=_fake_cell_runner(calls, ("sft_sample_rank-hinge", 0)))
  assert rc == 5 and len(calls) == 2  # sigmoid_norm finished, hinge failed, hinge_norm not run
  assert "failed with exit status 5; rerun the same command" in capsys.readouterr().err
  assert "cells finished: 1/3" in open(out).read()
  calls.clear()
  assert paper_table.run_study(cells, root, "rso_hinge.gin", [], out, "greedy", "CMD",
                               runner=_fake_cell_runner(calls)) == 0
  assert [json.loads(dict(a[6:].split("=", 1) for a in c if a.startswith("--gin."))
                     ["POLICY_NAME"]) for c in calls] == ["sft_sample_rank-hinge",
                                                          "sft_sample_rank-hinge_norm"]


@pytest.mark.parametrize("args,message", [
    (["--losses", "dpo"], "--losses=['dpo']: choose from"),
    (["--seeds", "1", "1"], "--seeds=[1, 1]: give distinct"),
    (["--baselines", "raft", "raft"], "--baselines=['raft', 'raft']: choose from"),
])
def test_paper_table_bad_arguments_are_one_line_and_exit_2(args, message, capsys):
  assert paper_table.main([*args, "--dry_run"]) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1


def test_paper_table_dry_run_prints_the_cells_and_writes_nothing(tmp_path, capsys):
  out = tmp_path / "t.md"
  assert paper_table.main(["--seeds", "4", "--run_root", str(tmp_path), "--out", str(out),
                           "--dry_run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  # The table (9), the baselines (2), the frontier's gamma sweep (3 settings x 3 gammas), then
  # round 2 from the rso hinge_norm cells at gamma 0.05 and 0.5.
  assert len(lines) == 22 and lines[0].startswith("[1/22] direct-sigmoid_norm seed 4: ")
  assert lines[10].startswith("[11/22] rest seed 4: ") and "gin/variants/rest.gin" in lines[10]
  assert "gin/variants/direct.gin" in lines[0] and not out.exists()
  assert [line.split()[1] for line in lines[11:20]] == [
      f"{st}-hinge_norm-gamma{g}" for st in paper_table.SETTINGS for g in ("0.005", "0.5", "5")]
  assert lines[19].endswith(" --gin.GAMMA=5.0")
  assert [line.split()[1] for line in lines[20:]] == [
      "round2-rso_sample_rank-hinge_norm", "round2-rso_sample_rank-hinge_norm-gamma0.5"]
  assert all("gin/variants/iterative.gin" in line for line in lines[20:])


def test_paper_table_trajectory_is_kl_and_mean_golden_reward_per_step():
  ev = lambda kl, r: {"kl/mean": kl, "results": {"sample": {"golden/policy": r,
                                                            "golden/sft": 0.4}}}
  by_step = {"steps": {"300": ev(2.0, 0.3), "100": ev(0.5, 0.45), "200": {"kl/mean": 1.0}}}
  assert paper_table.trajectory(by_step) == [(100, 0.5, 0.45, 0.4), (300, 2.0, 0.3, 0.4)]


def _sampling_arguments(scope):
  """What the sampling stage runs with under `scope`: gin's bindings over `sample.run`'s
  defaults (the paper's recipe where the gin files leave it)."""
  defaults = {k: p.default for k, p in inspect.signature(sample.run).parameters.items()
              if p.default is not inspect.Parameter.empty}
  return {**defaults, **pipeline.stage_bindings(sample.sample_configured, scope)}


@pytest.mark.parametrize("name", sorted(paper_table.ABLATIONS))
def test_paper_table_ablations_change_one_knob_of_the_rso_hinge_norm_cell(name):
  """Each ablation cell is the rso_sample_rank / hinge_norm cell of its seed with its one knob
  read by the stage it configures (the sampling stage, or the policy's gamma)."""
  cells = paper_table.cells([2], settings=["direct"], losses=["hinge"], baselines=[],
                            ablations=[name])
  assert [c.name for c in cells] == ["direct-hinge", "best_of_n-hinge_norm" if name == "best_of_n"
                                      else f"rso_sample_rank-hinge_norm-{name}"]
  flags = cli.parse_flags(cells[1].argv("/tmp/study", "rso_hinge.gin")[3:])
  cli.configure_gin(flags.files, flags.bindings, [os.path.join(REPO, "gin")])
  assert not cli.unread_macros()
  draw = _sampling_arguments("sample")
  policy = pipeline.stage_bindings(train_lib.train, "")
  got = dict(beta=draw["beta"], pair_method=draw["pair_method"],
             rejection_mode=draw["rejection_mode"],
             proposal_correction=draw["proposal_correction"], data_setting=draw["data_setting"],
             gamma=policy["model"].gamma, loss=policy["model"].loss.name, seed=draw["seed"])
  gin.clear_config()
  want = dict(beta=0.5, pair_method="first_round", rejection_mode="paper",
              proposal_correction=False, data_setting="rso_sample_rank", gamma=0.05,
              loss="hinge_norm", seed=2)
  changed = {"beta0": dict(beta=0.0), "beta0.05": dict(beta=0.05), "beta5": dict(beta=5.0),
             "gamma0.005": dict(gamma=0.005), "gamma0.5": dict(gamma=0.5),
             "tournament": dict(pair_method="tournament"),
             "single_pass": dict(rejection_mode="single_pass"),
             "proposal_correction": dict(proposal_correction=True),
             "best_of_n": dict(data_setting="best_of_n")}[name]
  assert got == dict(want, **changed)


def test_paper_table_ablations_have_their_own_table_beside_the_unchanged_cell(tmp_path):
  root, out = str(tmp_path / "runs"), str(tmp_path / "table.md")
  cells = paper_table.cells([0, 1], settings=["rso_sample_rank"], losses=["hinge_norm"],
                            baselines=[], ablations=["all"])
  assert len(cells) == 2 * (1 + len(paper_table.ABLATIONS))
  calls = []
  assert paper_table.run_study(cells, root, "rso_hinge.gin", [], out, "greedy", "CMD",
                               runner=_fake_cell_runner(calls)) == 0
  text = open(out).read()
  assert text.startswith("# RSO paper table (Table 1 layout) and ablations on")
  # The main table holds the unchanged cell alone (the fake gives rso* names +0.5): proxy vs
  # the SFT targets 70 / 80 % over seeds 0 / 1.
  assert "| hinge_norm | 75.0 ± 5.0 / 65.0 ± 5.0 |" in text
  assert "| hinge_norm | 2 |" in text  # seeds per cell: the ablations are not counted there
  assert ("| (none) | — | 75.0 ± 5.0 / 65.0 ± 5.0 | 30.0 ± 0.0 / 40.0 ± 0.0 | 1.50 ± 0.50 | "
          "80.0 ± 5.0 / 65.0 ± 5.0 | 2 |") in text
  # Ablation cells (no +0.5 in the fake; +0.2 golden where gamma is overridden): 25 / 15 %.
  assert ("| beta5 | `beta=5.0` | 25.0 ± 5.0 / 15.0 ± 5.0 | 30.0 ± 0.0 / 40.0 ± 0.0 | "
          "1.50 ± 0.50 | 30.0 ± 5.0 / 15.0 ± 5.0 | 2 |") in text
  assert "| best_of_n | `DATA_SETTING=best_of_n` |" in text
  assert "| gamma0.5 | `GAMMA=0.5` |" in text
  assert paper_table.main(["--ablations", "beta7", "--dry_run"]) == 2


def test_paper_table_gamma_sweep_is_each_settings_hinge_norm_cell_at_each_gamma(capsys):
  """--gammas adds every data setting's hinge_norm cell at each gamma, after the seed's table
  and baselines; the paper's gamma ablation of a swept gamma is that same cell (run once)."""
  cells = paper_table.cells([1], settings=["direct", "rso_sample_rank"], losses=["hinge_norm"],
                            baselines=["raft"], ablations=["gamma0.5", "beta5"], gammas=[0.5, 5])
  assert [c.name for c in cells] == [
      "direct-hinge_norm", "rso_sample_rank-hinge_norm", "raft",
      "direct-hinge_norm-gamma0.5", "direct-hinge_norm-gamma5",
      "rso_sample_rank-hinge_norm-gamma0.5", "rso_sample_rank-hinge_norm-gamma5",
      "rso_sample_rank-hinge_norm-beta5"]
  assert [c.gamma for c in cells] == [None, None, None, 0.5, 5.0, 0.5, 5.0, None]
  for cell in (cells[3], cells[6]):
    flags = cli.parse_flags(cell.argv("/tmp/study", "rso_hinge.gin")[3:])
    cli.configure_gin(flags.files, flags.bindings, [os.path.join(REPO, "gin")])
    assert not cli.unread_macros()
    policy = pipeline.stage_bindings(train_lib.train, "")
    got = (policy["model"].gamma, policy["model"].loss.name, policy["mixture_or_task_name"],
           gin.query_parameter("%POLICY_NAME"))
    gin.clear_config()
    assert got == (cell.gamma, "hinge_norm", "synthetic_dhf" if cell.setting == "direct"
                   else "rso_pairs", cell.name)
  for bad in (["0"], ["0.5", "0.5"], ["nan"]):
    assert paper_table.main(["--gammas", *bad, "--dry_run"]) == 2
    assert f"--gammas=[{', '.join(str(float(b)) for b in bad)}]: give distinct positive" in (
        capsys.readouterr().err)


def test_paper_table_at_kl_interpolates_inside_the_curve_only():
  pts = [(3.0, 0.6), (1.0, 0.2), (2.0, 0.3)]  # any order: taken by KL
  assert paper_table.at_kl(pts, 1.5) == pytest.approx(0.25)
  assert paper_table.at_kl(pts, 2.5) == pytest.approx(0.45)
  assert paper_table.at_kl(pts, 1.0) == pytest.approx(0.2)
  assert paper_table.at_kl(pts, 3.0) == pytest.approx(0.6)
  assert paper_table.at_kl(pts, 0.5) is None and paper_table.at_kl(pts, 3.5) is None
  assert paper_table.at_kl([(1.0, 0.2)], 1.0) is None


def test_paper_table_frontier_compares_the_settings_at_equal_kl(tmp_path):
  """The gamma sweep's report: each setting at each gamma (the unchanged cell's gamma read from
  the config its training wrote), each seed's curve interpolated at the KL budgets, and the
  frontier PNG's second panel."""
  root, out, png = str(tmp_path / "runs"), str(tmp_path / "t.md"), tmp_path / "f.png"
  cells = paper_table.cells([0, 1], settings=["direct", "rso_sample_rank"],
                            losses=["hinge_norm"], baselines=[], gammas=[0.5])
  assert paper_table.run_study(cells, root, "rso_hinge.gin", [], out, "greedy", "CMD",
                               runner=_fake_cell_runner([]), frontier=str(png)) == 0
  text = open(out).read()
  # The fake: KL (1 + seed) * sqrt(0.05 / gamma); golden win 0.1 + 0.1 seed (+0.5 for the
  # unchanged rso cell, +0.2 where gamma is overridden); mean r* 0.4 above the win rate.
  k = (0.05 / 0.5) ** 0.5
  assert "| π_sft | — | 0 | 35.0 ± 5.0 | 0.450 ± 0.050 | 2 |" in text  # the fake's π_sft
  assert f"| direct | 0.05 | 1.50 ± 0.50 | 15.0 ± 5.0 | 0.550 ± 0.050 | 2 |" in text
  assert (f"| direct | 0.5 | {1.5 * k:.2f} ± {0.5 * k:.2f} | 35.0 ± 5.0 | 0.750 ± 0.050 | 2 |"
          in text)
  assert f"| rso_sample_rank | 0.05 | 1.50 ± 0.50 | 65.0 ± 5.0 | 1.050 ± 0.050 | 2 |" in text
  # At KL 1: seed 0's curves end there (direct 0.1, rso 0.6); seed 1's direct curve runs from
  # (2k, 0.4) to (2, 0.2).
  seed1 = 0.4 + (0.2 - 0.4) * (1.0 - 2 * k) / (2.0 - 2 * k)
  mean, se = (0.1 + seed1) / 2, abs(seed1 - 0.1) / 2
  rso1 = 0.4 + (0.7 - 0.4) * (1.0 - 2 * k) / (2.0 - 2 * k)  # rso seed 1: (2k, 0.4) to (2, 0.7)
  rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
  assert rows["| 1"] == (f"| 1 | {100 * mean:.1f} ± {100 * se:.1f} / {mean + 0.4:.3f} ± {se:.3f}"
                         f" (2) | {100 * (0.6 + rso1) / 2:.1f} ± {100 * abs(rso1 - 0.6) / 2:.1f}"
                         f" / {(0.6 + rso1) / 2 + 0.4:.3f} ± {abs(rso1 - 0.6) / 2:.3f} (2) |")
  assert rows["| 2"] == "| 2 | 20.0 / 0.600 (1) | 70.0 / 1.100 (1) |"  # seed 1's end point
  assert rows["| 4"] == "| 4 | — | — |" and rows["| 8"] == "| 8 | — | — |"
  width = lambda p: int.from_bytes(p.read_bytes()[16:20], "big")
  assert width(png) == 1300  # two panels: along training, and over gamma
  # Without the sweep: no frontier tables, one panel.
  plain = paper_table.cells([0], settings=["direct"], losses=["hinge_norm"], baselines=[])
  assert paper_table.run_study(plain, root, "rso_hinge.gin", [], out, "greedy", "CMD",
                               runner=_fake_cell_runner([]), frontier=str(png)) == 0
  assert "frontier over γ" not in open(out).read() and width(png) == 700


def test_paper_table_resumes_from_another_clone_of_the_repository(tmp_path, monkeypatch):
  """The record holds the gin files relative to the checkout: the same study started from a
  clone elsewhere reuses the finished cells."""
  root, out = str(tmp_path / "runs"), str(tmp_path / "t.md")
  cells = paper_table.cells([0], settings=["direct"], losses=["hinge"], baselines=[])
  calls = []
  experiment = os.path.join(paper_table.REPO, "gin", "rso_hinge.gin")
  assert paper_table.run_study(cells, root, experiment, [], out, "greedy", "CMD",
                               runner=_fake_cell_runner(calls)) == 0
  record = json.load(open(cells[0].record_path(root)))
  assert record["argv"][2:4] == ["--gin_file=gin/rso_hinge.gin", "--gin_file=gin/variants/direct.gin"]
  clone = str(tmp_path / "clone")
  monkeypatch.setattr(paper_table, "REPO", clone)
  calls.clear()
  assert paper_table.run_study(cells, root, os.path.join(clone, "gin", "rso_hinge.gin"), [], out,
                               "greedy", "CMD", runner=_fake_cell_runner(calls)) == 0
  assert calls == []


def test_paper_table_round_two_starts_from_its_round_one_cell(tmp_path, capsys):
  """--round2: iterative RSO's second round (gin/variants/iterative.gin) from a round-1 cell of the same
  seed, in its own run directory, after the seed's other cells; its own table beside round 1,
  with the refreshed reward model's accuracy on the round-1 policy's samples."""
  cells = paper_table.cells([0, 1], settings=["rso_sample_rank"], losses=["hinge_norm"],
                            baselines=[], gammas=[0.5], round2=None)  # None: ROUND2's cells
  assert [c.name for c in cells[:3]] == [
      "rso_sample_rank-hinge_norm", "rso_sample_rank-hinge_norm-gamma0.5",
      "round2-rso_sample_rank-hinge_norm"] and len(cells) == 8
  two = cells[3]
  assert two.name == "round2-rso_sample_rank-hinge_norm-gamma0.5" and two.round1 == cells[1]
  flags = cli.parse_flags(two.argv("/tmp/study", "rso_hinge.gin")[3:])
  cli.configure_gin(flags.files, flags.bindings, [os.path.join(REPO, "gin")])
  assert not cli.unread_macros()
  policy = pipeline.stage_bindings(train_lib.train, "")
  got = (policy["initial_checkpoint_path"], policy["model_dir"], policy["model"].gamma,
         gin.query_parameter("%DATA_SETTING"))
  gin.clear_config()
  assert got == ("/tmp/study/seed0/rso_sample_rank-hinge_norm-gamma0.5",
                 f"/tmp/study/seed0/{two.name}/{two.name}", 0.5, "rso_sample_rank")
  for bad in (["direct-hinge_norm"], ["rso_sample_rank-hinge"]):  # not sampled / not a cell
    assert paper_table.main(["--losses", "hinge_norm", "--round2", *bad, "--dry_run"]) == 2
    assert f"--round2={bad}: choose distinct sampled cells" in capsys.readouterr().err
  root, out = str(tmp_path / "runs"), str(tmp_path / "t.md")
  cells = paper_table.cells([0, 1], settings=["rso_sample_rank"], losses=["hinge_norm"],
                            baselines=[], round2=["rso_sample_rank-hinge_norm"])
  quality = tmp_path / "runs" / "seed0" / "round2-rso_sample_rank-hinge_norm" / "reward_bt"
  quality.mkdir(parents=True)
  (quality / "reward_quality.json").write_text(json.dumps({"metrics": {
      "sft_samples/accuracy_golden": 0.474, "accuracy_golden": 0.7}}))
  assert paper_table.run_study(cells, root, "rso_hinge.gin", [], out, "greedy", "CMD",
                               runner=_fake_cell_runner([])) == 0
  text = open(out).read()
  # Round 1: the unchanged rso cell (+0.5 in the fake); round 2: no +0.5; KL 1 + seed both.
  # No gamma sweep here: no round-1 frontier to place round 2 on ("—").
  assert ("| rso_sample_rank-hinge_norm | 1.50 ± 0.50 / 65.0 ± 5.0 / 1.050 ± 0.050 | "
          "1.50 ± 0.50 / 15.0 ± 5.0 / 0.550 ± 0.050 | — | 25.0 ± 5.0 | 0.474 | 2 |") in text
  assert "| hinge_norm | 75.0 ± 5.0 / 65.0 ± 5.0 |" in text  # the table: round 1 only
  assert "| hinge_norm | 2 |" in text
  # With the sweep (gamma 0.5: KL (1 + seed) * sqrt(0.1), golden 0.3 + 0.1 seed): round 2 of the
  # gamma-0.5 cell (KL as its round 1, golden 0.3 + 0.1 seed) sits on seed s's round-1 curve at
  # KL (1 + seed) * sqrt(0.1), its gamma-0.5 end: golden 0.3 / 0.4, r* 0.7 / 0.8.
  cells = paper_table.cells([0, 1], settings=["rso_sample_rank"], losses=["hinge_norm"],
                            baselines=[], gammas=[0.5],
                            round2=["rso_sample_rank-hinge_norm-gamma0.5"])
  assert paper_table.run_study(cells, root, "rso_hinge.gin", [], out, "greedy", "CMD",
                               runner=_fake_cell_runner([])) == 0
  row = [l for l in open(out).read().splitlines()
         if l.startswith("| rso_sample_rank-hinge_norm-gamma0.5 | ")][0]
  assert row.split(" | ")[3] == "35.0 ± 5.0 / 0.750 ± 0.050 (2)"


def test_judge_validation_ranks_the_graders_against_r_star(tmp_path, capsys):
  """Five cells: the judge orders them as r* does, the proxy in reverse; the rank
  correlations, their difference's interval and the verdict follow."""
  jv = _load("judge_validation")
  golden = [0.3, 0.4, 0.5, 0.6, 0.7]
  seed_dir = tmp_path / "seed0"
  seed_dir.mkdir()
  for i, g in enumerate(golden):
    res = {"vs_sft/golden": g, "vs_sft/proxy": 0.9 - g, "vs_sft/judge": g + 0.1,
           "vs_sft/judge_lc": g, "golden/policy": g,
           "vs_sft/proxy_agreement_with_golden": 0.4,
           "vs_sft/judge_agreement_with_golden": 0.8}
    report = {"name": f"c{i}", "kl/mean": float(i), "results": {"sample": res},
              "judge/heldout_accuracy": 0.75, "judge/heldout_pairs": 100}
    (seed_dir / f"eval_c{i}.json").write_text(json.dumps(report))
    steps = {"200": dict(report, results={"sample": dict(res, **{"vs_sft/golden": g - 0.01})}),
             "300": report}
    (seed_dir / f"eval_c{i}_checkpoints.json").write_text(json.dumps({"steps": steps}))
  (seed_dir / "eval_summary.json").write_text("{}")
  last, every = jv.collect(str(tmp_path))
  assert [p["cell"] for p in last] == [f"c{i}" for i in range(5)] and len(every) == 10
  c = jv.correlations(last)
  assert c["n"] == 5
  assert (c["judge"], c["judge_lc"], c["proxy"]) == pytest.approx((1.0, 1.0, -1.0))
  assert c["judge_minus_proxy"] == pytest.approx(2.0)
  lo, hi = c["judge_minus_proxy_ci"]
  assert 0 < lo <= hi <= 2.0 + 1e-9
  assert jv.verdict(c).startswith("the judge tracks r* better than the proxy")
  out = tmp_path / "judge.md"
  assert jv.main(["--run_root", str(tmp_path), "--out", str(out)]) == 0
  text = out.read_text()
  assert "| c0 | seed0 | 0.00 | 60.0 | 40.0 | 30.0 | 30.0 | 0.400 | 0.800 |" in text
  assert "accuracy on its held-out comparisons: 0.750 on 100 pairs" in text
  # Graders that agree on the order cannot be told apart.
  tie = [dict(p, proxy=p["judge"]) for p in last]
  assert "cannot tell the judge from the proxy" in jv.verdict(jv.correlations(tie))
  assert jv.main(["--run_root", str(tmp_path / "empty")]) == 2


# ----------------------------------------------------------------------------- rso_study.py
study_stats = _load("rso_study_stats")
rso_study = _load("rso_study")


def test_pi_star_over_candidates_by_hand():
  """Two prompts, three candidates: softmax(r/β) weights, E r*, KL to the empirical law."""
  rewards = [[0.0, 1.0, 2.0], [1.0, 1.0, float("nan")]]
  golden = [[0.1, 0.5, 0.9], [0.2, 0.4, 7.0]]
  w0 = [math.exp(r / 0.5) for r in (0.0, 1.0, 2.0)]
  w0 = [w / sum(w0) for w in w0]
  g0 = w0[0] * 0.1 + w0[1] * 0.5 + w0[2] * 0.9
  kl0 = sum(w * math.log(3 * w) for w in w0)
  g1, kl1 = 0.5 * 0.2 + 0.5 * 0.4, 0.0  # equal rewards: uniform over the 2 valid ones
  out = study_stats.pi_star(rewards, golden, 0.5)
  assert out["golden"] == pytest.approx((g0 + g1) / 2)
  assert out["kl"] == pytest.approx((kl0 + kl1) / 2)
  best = study_stats.pi_star(rewards, golden, 0.0)  # the argmax, ties shared
  assert best["golden"] == pytest.approx((0.9 + 0.3) / 2)
  assert study_stats.pi_star(rewards, golden, 1e6)["kl"] == pytest.approx(0.0, abs=1e-6)
  bon = study_stats.best_of_n(rewards, golden)
  assert bon["golden"] == best["golden"] and bon["kl"] == pytest.approx(math.log(3) - 2 / 3)


def test_paired_differences_and_the_curve_read_at_a_kl():
  a, b = [0.5, 0.7, 0.6, None, 0.9], [0.4, 0.5, 0.65, 0.3, 0.6]
  d = [0.1, 0.2, -0.05, 0.3]  # the seed with None drops out
  se = statistics_stdev(d) / math.sqrt(4)
  out = study_stats.paired_t(a, b)
  assert out["n"] == 4 and out["mean"] == pytest.approx(sum(d) / 4)
  assert out["se"] == pytest.approx(se)
  assert out["lo"] == pytest.approx(sum(d) / 4 - 3.182 * se)
  assert out["hi"] == pytest.approx(sum(d) / 4 + 3.182 * se)
  assert study_stats.paired_t([1.0], [0.5])["lo"] is None
  assert rso_study.verdict(out) == "not resolved (the interval covers 0)"
  assert rso_study.verdict({"lo": 0.01, "hi": 0.2}) == "holds (RSO higher)"
  assert rso_study.verdict({"lo": -0.3, "hi": -0.1}) == "flips (sft-sample-rank higher)"
  curve = [(0.0, 0.5), (1.0, 0.7), (0.8, 0.9), (3.0, 0.6)]  # KL fell back at the 3rd point
  assert study_stats.at_kl(curve, 0.5) == pytest.approx(0.6)
  assert study_stats.at_kl(curve, 2.0) == pytest.approx(0.65)
  assert study_stats.at_kl(curve, 3.5) is None


def statistics_stdev(values):
  m = sum(values) / len(values)
  return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def test_the_study_selects_on_prompts_it_never_reports_or_trains_on(tmp_path):
  design = rso_study.Design(seeds=(0,), levels=("oracle",))
  testbed = dict(rso_study.TESTBED, num_train_prompts=2000)
  study = rso_study.Study(str(tmp_path), design, testbed=testbed)
  select = set(study._split_prompts("validation"))  # pylint: disable=protected-access
  report = set(study._split_prompts("test"))  # pylint: disable=protected-access
  from rso_jax import datasets  # pylint: disable=g-import-not-at-top
  train = set(datasets.read_prompts("synthetic_prompts", "train", None))
  assert len(select) == design.select_prompts and len(report) == design.eval_prompts
  assert not select & report and not (select | report) & train
  assert {len(p.split()) for p in report} <= set(range(6, 11))  # the testbed's prompts
  assert design.steps == design.pairs * design.passes // 32 and design.steps // design.period >= 10


@pytest.fixture(scope="module")
def words_sft(tmp_path_factory):
  import helpers  # pylint: disable=g-import-not-at-top
  return helpers.shared_words_sft(tmp_path_factory)


def test_every_cell_trains_on_the_same_number_of_unique_pairs(words_sft, tmp_path):
  """direct, sft-sample-rank and rso-sample-rank: exactly `pairs` pairs each, the same steps;
  a curve of every kept checkpoint, and the selected step is one of them (or π_sft)."""
  import shutil  # pylint: disable=g-import-not-at-top
  design = rso_study.Design(seeds=(0,), levels=("oracle",), pairs=48, passes=2, checkpoints=3,
                            eval_prompts=4, select_prompts=4, eval_samples=2, candidates=16)
  testbed = dict(min_keywords=2, max_keywords=5, max_response_words=6, sft_keep_prob=0.75,
                 ordered=False, num_train_prompts=500)
  study = rso_study.Study(str(tmp_path), design, testbed=testbed)
  shutil.copytree(words_sft, study.sft_path)
  study.ensure_rewards()
  records = {}
  for setting in ("sft_sample_rank", "rso_sample_rank", "direct"):
    level = None if setting == "direct" else "oracle"
    rec = study.run_cell(level, setting, 0)
    records[(level, setting, 0)] = rec
    assert rec["accounting"]["pairs"] == 48 and rec["steps"] == 3
    assert sorted(int(s) for s in rec["curve"]) == [1, 2, 3]
    if setting != "direct":
      assert rec["accounting"]["identical_dropped"] >= 0
      data = os.path.join(study.cell_dir(level, setting, 0), "pairs")
      from rso_jax.tasks import generated  # pylint: disable=g-import-not-at-top
      assert sum(1 for _ in generated.read_records(data)) == 48
      assert rec["accounting"]["label_agreement"] == 1.0  # the oracle labels as r* does
    assert rso_study.selected_step(study, rec, "oracle", 0) in (0, 1, 2, 3)
  assert study.run_cell("oracle", "rso_sample_rank", 0) == records[("oracle",
                                                                    "rso_sample_rank", 0)]
  summary = rso_study.summarize(study, records)
  assert set(summary["oracle"]["paired"]) >= {"kl1", "kl2", "selected", "last"}
