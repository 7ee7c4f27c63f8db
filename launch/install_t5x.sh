#!/usr/bin/env bash
# Installs upstream T5X (for gin/t5x/ and `python -m t5x.train`) into the current Python
# environment without touching rso_jax's pins (requirements.txt: jax 0.10.x, flax 0.12.x, ...).
#
#   bash launch/install_t5x.sh            # from the public repositories (needs internet)
#   T5X_WHEELS=DIR bash launch/install_t5x.sh   # offline, from wheels built from the same commits
#
# T5X's setup file requires git-HEAD flax/optax/clu/seqio, which break the pins, so T5X, airio
# and jestimator go in with --no-deps, and the few registry packages they import are added by
# name. These are the commits checked with rso_jax's pins (tests/test_t5x_models.py):
set -euo pipefail
T5X_COMMIT=cc342d419ec3e3e9c4bf1df33c82330cafdc1e16          # google-research/t5x, 2026-04-21
AIRIO_COMMIT=69897df7d9a427b947a9f7bb4164c7782b43e601        # google/airio, 2026-04-09
JESTIMATOR_COMMIT=326824a477feef6d92e6f44175000907a72899ca   # google-research/jestimator, 2024-05-15
PYTHON=${PYTHON:-python3}

if [ -n "${T5X_WHEELS:-}" ]; then
  shopt -s nullglob
  wheels=("$T5X_WHEELS"/t5x-*.whl "$T5X_WHEELS"/airio-*.whl "$T5X_WHEELS"/jestimator-*.whl)
  if [ "${#wheels[@]}" -ne 3 ]; then
    echo "install_t5x.sh: T5X_WHEELS=$T5X_WHEELS must hold one t5x, airio and jestimator wheel" >&2
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-deps "${wheels[@]}"
else
  "$PYTHON" -m pip install -q --no-deps \
    "git+https://github.com/google-research/t5x@${T5X_COMMIT}" \
    "git+https://github.com/google/airio@${AIRIO_COMMIT}" \
    "git+https://github.com/google-research/jestimator@${JESTIMATOR_COMMIT}"
fi
"$PYTHON" -m pip install -q grain==0.2.18 chex==0.1.92 fiddle==0.3.1 jaxtyping==0.3.11 \
  cached-property==2.0.1 tensorstore==0.1.86
cd "$(dirname "$0")/.."
"$PYTHON" -c "import t5x.train, rso_jax.t5x_models" && \
  echo "t5x installed: python -m t5x.train --gin_file=gin/t5x/rso_hinge.gin is available"
