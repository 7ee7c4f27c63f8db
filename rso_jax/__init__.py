"""rso_jax: statistical rejection sampling optimization (arXiv 2309.06657) on T5 in JAX/Flax."""

__version__ = "0.1.0"
