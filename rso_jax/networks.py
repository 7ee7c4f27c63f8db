"""The network families: which module a config builds, and a config's JSON form.

Two families share one call signature (`encode` / `decode` / `__call__`, see `network.py`):
  "t5"       `network.T5Config` -> `network.Transformer` (T5 v1.1 encoder-decoder)
  "decoder"  `decoder_network.DecoderConfig` -> `decoder_network.DecoderTransformer`
             (Llama / Qwen2 decoder-only)
A manifest's `network` entry is the config's fields, plus `"family": "decoder"` for a decoder
(an entry without `family` is a T5, as every manifest before the decoder family was).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Union

import flax.linen as nn

from rso_jax import decoder_network
from rso_jax import network

NetworkConfig = Union[network.T5Config, decoder_network.DecoderConfig]
FAMILIES = {"t5": network.T5Config, "decoder": decoder_network.DecoderConfig}
CONFIG_TYPES = tuple(FAMILIES.values())


def check_config(config: Any) -> None:
  """TypeError unless `config` is a network config of a known family."""
  if not isinstance(config, CONFIG_TYPES):
    raise TypeError(f"config must be a network.T5Config or a decoder_network.DecoderConfig, got "
                    f"{type(config).__name__}")


def family(config: NetworkConfig) -> str:
  check_config(config)
  return "decoder" if isinstance(config, decoder_network.DecoderConfig) else "t5"


def is_decoder_only(config: NetworkConfig) -> bool:
  return family(config) == "decoder"


def build(config: NetworkConfig) -> nn.Module:
  """The network module of `config`."""
  if is_decoder_only(config):
    return decoder_network.DecoderTransformer(config)
  return network.Transformer(config)


def to_json(config: NetworkConfig) -> dict:
  d = dataclasses.asdict(config)
  if is_decoder_only(config):
    d["family"] = "decoder"
  return d


def from_json(d: Mapping[str, Any]) -> NetworkConfig:
  """The config of a manifest's `network` entry (ValueError for an unknown family)."""
  d = dict(d)
  name = d.pop("family", "t5")
  if name not in FAMILIES:
    raise ValueError(f"network family {name!r}: use one of {tuple(FAMILIES)}")
  if name == "t5":
    d["mlp_activations"] = tuple(d["mlp_activations"])
  return FAMILIES[name](**d)


def differences(stored: NetworkConfig, configured: NetworkConfig) -> dict:
  """{field: (stored, configured)} of the fields in which two configs differ (`family` when
  they are of different families)."""
  if type(stored) is not type(configured):
    return {"family": (family(stored), family(configured))}
  return {f.name: (getattr(stored, f.name), getattr(configured, f.name))
          for f in dataclasses.fields(configured)
          if getattr(stored, f.name) != getattr(configured, f.name)}
