"""Throughput calibration against published serving figures (the emulator's headline numbers).

Workload: dense Llama-3-70B in FP8 at TP8 on one 8-chip server, 1024 requests of 2048 input and
128 output tokens, all arriving at once; throughput counts input and output tokens.

- Etched's public claim for Sohu: ~500,000 tokens/s per 8-chip server on Llama-70B.
- NVIDIA's TensorRT-LLM 0.10 figure for 8x H100 on the same workload: ~23,000 tokens/s, so a
  Sohu server is roughly 20x an H100 server.
"""

from __future__ import annotations

import numpy as np
import pytest
from emu_support import make_config

from sohuprof.emulator.runtime import Emulation

WORKLOAD = dict(model="llama3-70b", nodes=1, chips_per_node=8, tp=8, requests=1024, prompt_len=2048,
                output_len=128, dtype="fp8")


def _tokens_per_s(hw: str) -> float:
    em = Emulation(make_config(hw=hw, **WORKLOAD))
    for _ in em.steps():
        pass
    req = em.request_table()
    assert (req["output_tokens"] == 128).all() and not np.isnan(req["finish"]).any()
    tokens = req["prompt_tokens"].sum() + req["output_tokens"].sum()
    return float(tokens / ((req["finish"].max() - req["arrival"].min()) / 1e9))


@pytest.fixture(scope="module")
def throughput() -> dict[str, float]:
    return {hw: _tokens_per_s(hw) for hw in ("sohu", "h100")}


@pytest.mark.slow
def test_sohu_lands_near_etched_claim(throughput: dict[str, float]) -> None:
    assert 300_000 <= throughput["sohu"] <= 700_000, f"{throughput['sohu']:,.0f} tokens/s"


@pytest.mark.slow
def test_h100_lands_near_tensorrt_llm_figure(throughput: dict[str, float]) -> None:
    assert 17_000 <= throughput["h100"] <= 30_000, f"{throughput['h100']:,.0f} tokens/s"


@pytest.mark.slow
def test_sohu_to_h100_ratio(throughput: dict[str, float]) -> None:
    ratio = throughput["sohu"] / throughput["h100"]
    assert 12 <= ratio <= 30, f"ratio {ratio:.1f}"
