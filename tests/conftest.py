"""Test setup: 8 simulated CPU devices so every sharding path is exercised."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"


import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# Files whose end-to-end tests take minutes, longest first: collected first, so that with
# `-n 2 --dist loadfile` a worker starts each of them early and the two finish together.
SLOW_FILES = ("test_pipeline.py", "test_experiments.py", "test_package.py",
              "test_decoder_experiments.py", "test_multihost.py", "test_launch.py",
              "test_t5x_models.py", "test_fs.py", "test_run_lock.py")


def pytest_configure(config):
  # xdist hands out files in collection order, not most-tests-first (its default): a few
  # minutes-long tests in one file would otherwise start last.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  rank = {name: i for i, name in enumerate(SLOW_FILES)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(SLOW_FILES)))


@pytest.fixture(autouse=True)
def _default_synthetic_tasks():
  """A test that configures an experiment re-registers the synthetic tasks (the embedded
  experiment: its word vocabulary, its D_hf); the next test in the process gets the defaults
  that `import rso_jax.tasks` registers back."""
  from rso_jax.tasks import embedded  # pylint: disable=g-import-not-at-top
  before = embedded.registered_settings()
  yield
  if embedded.registered_settings() != before:
    embedded.register_synthetic_tasks()
