"""launch/: the sweep (grid of gin overrides -> runs) and the launch scripts' DRY_RUN."""

import importlib.util
import os
import shlex
import subprocess
import sys

import gin
import jax
import pytest

from rso_jax import cli, models, partitioning, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "launch", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


sweep = _load("sweep")
memory = _load("memory")

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
