"""Shape-aware efficiency (timing.ShapeModel) against what the hardware does.

- Tile quantisation: a GEMM's M is rounded up to the kernel's 64-row tile, so 65 rows cost what
  128 do; wave quantisation: output tiles run in waves over the 132 SMs.
- Small-M decode GEMMs are memory bound: their time is the weights over the HBM bandwidth.
- A large FP8 GEMM on H100 reaches ~0.7 of the 1.98 PFLOP/s peak (cuBLASLt's ~1.4 PFLOP/s).
- Attention: prefill efficiency rises with the context (FlashAttention-3), decode streams the KV
  cache faster the longer it is; both tables interpolate, with no step at any hand-set length.
"""

from __future__ import annotations

import numpy as np
import pytest
from emu_support import make_config

from sohuprof.emulator.lowering import lower
from sohuprof.emulator.plan import ParallelPlan
from sohuprof.emulator.timing import ShapeModel, op_times
from sohuprof.strace import Engine


@pytest.fixture(scope="module")
def shapes():
    cfg = make_config(model="llama3-70b", hw="h100", nodes=1, chips_per_node=2, tp=2, dtype="fp8")
    prog = lower(cfg, ParallelPlan.build(cfg))
    model = ShapeModel.build(prog, cfg)
    names = [prog.templates[i].name for i in prog.tmpl]
    return cfg, prog, model, names


def _gemm(shapes, name: str, rows: np.ndarray):
    """Compute efficiency and time (ns) of the first ``name`` op at each row count."""
    cfg, prog, model, names = shapes
    k = names.index(name)
    flops = np.zeros((len(rows), len(prog)))
    flops[:, k] = rows * model.row_flops[k]
    comp, mem = model.efficiency(flops, np.ones(len(rows)), cfg.hardware)
    hbm = np.zeros_like(flops)
    hbm[:, k] = prog.hbm[prog.tmpl[k], 0]                      # the weights, read once
    engine = np.array([int(prog.templates[i].engine) for i in prog.tmpl])
    dur, _ = op_times(flops, hbm, engine, cfg.hardware, cfg.dtype, np.ones(len(rows)), np.ones_like(flops),
                      (comp, mem))
    return comp[:, k], dur[:, k] - cfg.hardware.launch_overhead_ns, hbm[0, k]


def test_rows_round_up_to_the_tile(shapes) -> None:
    hw = shapes[0].hardware
    eff, _, _ = _gemm(shapes, "gate_up_proj", np.array([64.0, 65.0, 128.0, 4096.0, 4097.0]))
    compute = np.array([64, 65, 128, 4096, 4097]) / eff        # time in units of one row at peak
    assert compute[1] == pytest.approx(compute[2])             # 65 rows: two 64-row tiles, like 128
    assert compute[4] > compute[3] * (1 + 32 / 4096)           # one more tile row, a part-filled wave
    assert (eff > 0).all() and (eff <= max(hw.gemm_efficiency)).all()


def test_small_m_decode_gemm_streams_its_weights(shapes) -> None:
    hw = shapes[0].hardware
    _, dur, weights = _gemm(shapes, "gate_up_proj", np.array([1.0, 8.0, 32.0]))
    np.testing.assert_allclose(dur, weights / (hw.hbm_bandwidth * hw.memory_efficiency) * 1e9, rtol=1e-9)


def test_large_fp8_gemm_reaches_cublas_figure(shapes) -> None:
    cfg, _, model, names = shapes
    eff, _, _ = _gemm(shapes, "gate_up_proj", np.array([8192.0]))
    assert 0.6 <= eff[0] <= 0.75                                # ~1.4 of 1.98 PFLOP/s


def test_attention_efficiency_follows_the_context(shapes) -> None:
    cfg, prog, model, names = shapes
    k = names.index("attention")
    ctx = np.array([100.0, 1000.0, 1024.0, 1025.0, 4000.0, 16000.0])
    comp, mem = model.efficiency(np.ones((len(ctx), len(prog))), ctx, cfg.hardware)
    assert (np.diff(comp[:, k]) >= 0).all() and (np.diff(mem[:, k]) >= 0).all()
    assert comp[3, k] - comp[2, k] < 1e-3                      # smooth: no step at a power of two
    assert comp[0, k] < 0.5 * comp[-1, k] and mem[0, k] < mem[-1, k] <= 1
    # Other matrix ops keep the flat plateau.
    other = [i for i, t in enumerate(prog.tmpl) if prog.templates[t].engine == Engine.MATRIX
             and prog.templates[t].op not in ("gemm", "attention")]
    assert all(comp[0, i] == cfg.hardware.matmul_efficiency for i in other)


def test_sohu_has_no_waves_to_quantise() -> None:
    hw = make_config(hw="sohu").hardware
    assert hw.compute_units == hw.gemm_tile_m == hw.gemm_tile_n == 1
    assert max(hw.gemm_efficiency) == hw.matmul_efficiency
