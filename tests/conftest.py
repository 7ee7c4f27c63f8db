"""Test setup: 8 simulated CPU devices so every sharding path is exercised."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"


import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


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
