"""Hardware specifications: the roofs every timing and analysis is measured against.

A spec is a flat TOML file; presets ship in ``sohuprof/presets/hardware`` and a user's own file is
accepted wherever a preset name is.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sohuprof.errors import SpecError
from sohuprof.presets import preset_names, read_preset

__all__ = ["HardwareSpec", "load_hardware", "hardware_presets"]


@dataclass(frozen=True)
class HardwareSpec:
    """One accelerator chip and the links around it.

    Attributes
    ----------
    name, description : str
        Preset name and one line for people.
    chips_per_node : int
        Chips sharing one node's intra-node fabric.
    clock_hz : float
        Frequency of the trace unit's cycle counter (raw traces are in these cycles).
    peak_flops_fp8, peak_flops_bf16 : float
        Dense matrix-engine FLOP/s by operand type.
    vector_flops : float
        FLOP/s of the vector (element-wise, reduction) units.
    hbm_bandwidth : float
        HBM bytes/s; ``hbm_bytes`` its capacity, ``sram_bytes`` on-chip SRAM.
    intra_node_bandwidth, inter_node_bandwidth : float
        Bytes/s per direction of one intra-node link, and of one chip's share of the node's NIC.
    intra_node_links : int
        Intra-node links a chip drives at once: 1 behind a switch (NVLink: the bandwidth is the
        chip's aggregate), ``chips_per_node - 1`` in a fully connected mesh.
    intra_node_latency_ns, inter_node_latency_ns : float
        Per-message latency (the alpha of an alpha-beta cost).
    matmul_efficiency, vector_efficiency, memory_efficiency, comm_efficiency : float
        Fraction (0-1] of the matching peak that well-shaped work reaches.
    activation_hbm_fraction : float
        Share of activation traffic between ops that reaches HBM (1 on GPUs, where every kernel
        reads and writes HBM; small on a dataflow chip that keeps activations in SRAM).
    launch_overhead_ns : float
        Fixed cost added to every op (kernel launch); ``step_overhead_ns`` host work per step.
    jitter : float
        Log-normal sigma of per-op run time.
    compute_units, gemm_tile_m, gemm_tile_n : int
        Streaming multiprocessors (or matrix units a GEMM's output tiles are spread over) and the
        output tile a GEMM kernel computes at once: M and N are rounded up to whole tiles and the
        tiles run in waves over the units (tile and wave quantisation). 1, 1, 1: none.
    gemm_rows, gemm_efficiency : tuple of float
        Fraction of the matrix peak a tile-aligned, full-wave GEMM of that many rows (M) reaches,
        interpolated in log2(M) (pipeline fill and epilogue weigh more on short K loops of small
        M); empty: ``matmul_efficiency`` at every M.
    attention_context, attention_prefill_efficiency, attention_decode_efficiency : tuple of float
        By the mean context a query attends to (tokens, interpolated in log2): the fraction of
        the matrix peak prefill attention reaches (its FLOPs bound it) and the fraction of HBM
        bandwidth decode attention streams the KV cache at (its bytes bound it); empty:
        ``matmul_efficiency`` and ``memory_efficiency``.
    nvls : float
        Where the intra-node switch reduces in the fabric (NVLink SHARP, NCCL's NVLS), the
        fraction of the link bandwidth its all-reduce reaches: it moves each byte once each way
        instead of a ring's ``2(n-1)/n`` times. 0: no in-switch reduction.
    comm_compute_share : float
        Share of the compute units a running collective kernel holds (NCCL's and DeepEP's
        kernels run on SMs), taken from the ops that overlap it; 0 where a dedicated engine moves
        the data. Its HBM traffic is charged to those ops on every chip.
    """

    name: str
    description: str
    chips_per_node: int
    clock_hz: float
    peak_flops_fp8: float
    peak_flops_bf16: float
    vector_flops: float
    hbm_bandwidth: float
    hbm_bytes: float
    sram_bytes: float
    intra_node_bandwidth: float
    intra_node_links: int
    intra_node_latency_ns: float
    inter_node_bandwidth: float
    inter_node_latency_ns: float
    matmul_efficiency: float
    vector_efficiency: float
    memory_efficiency: float
    comm_efficiency: float
    activation_hbm_fraction: float
    launch_overhead_ns: float
    step_overhead_ns: float
    jitter: float
    compute_units: int = 1
    gemm_tile_m: int = 1
    gemm_tile_n: int = 1
    gemm_rows: tuple[float, ...] = ()
    gemm_efficiency: tuple[float, ...] = ()
    attention_context: tuple[float, ...] = ()
    attention_prefill_efficiency: tuple[float, ...] = ()
    attention_decode_efficiency: tuple[float, ...] = ()
    nvls: float = 0.0
    comm_compute_share: float = 0.0

    def peak_flops(self, dtype: str) -> float:
        """Dense matrix FLOP/s for operand type ``dtype`` (``fp8`` or ``bf16``)."""
        if dtype == "fp8":
            return self.peak_flops_fp8
        if dtype in ("bf16", "fp16"):
            return self.peak_flops_bf16
        raise SpecError(f"unknown dtype {dtype!r}: expected 'fp8' or 'bf16'")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for run.json and the store manifest)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> HardwareSpec:
        """Build a spec from a mapping, naming the missing or unknown keys on error."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        # Fields with a default (the shape tables, nvls, comm_compute_share) may be absent: older specs and stores.
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - set(fields))
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown {', '.join(unknown)}")
            raise SpecError(f"hardware spec {source}: {'; '.join(parts)}")
        values: dict[str, Any] = {}
        for name, typ in fields.items():
            if name not in data:
                continue
            raw = data[name]
            if typ.startswith("tuple"):
                if not isinstance(raw, (list, tuple)) or any(isinstance(v, (str, bool)) or v is None for v in raw):
                    raise SpecError(f"hardware spec {source}: '{name}' must be a list of numbers, got {raw!r}")
                try:
                    values[name] = tuple(float(v) for v in raw)
                except (TypeError, ValueError, OverflowError):
                    raise SpecError(f"hardware spec {source}: '{name}' must be a list of finite numbers") from None
                continue
            if typ != "str" and (isinstance(raw, (str, bool)) or raw is None):
                # float("inf") and int(True) would pass: a number must arrive as a number
                raise SpecError(f"hardware spec {source}: '{name}' must be a number, got {raw!r}")
            try:
                if typ == "str":
                    values[name] = str(raw)
                elif typ == "int":
                    values[name] = int(raw)
                else:
                    values[name] = float(raw)
            except (TypeError, ValueError, OverflowError):
                raise SpecError(f"hardware spec {source}: '{name}' must be a finite number, got {raw!r}") from None
        spec = cls(**values)
        spec._validate(source)
        return spec

    def _validate(self, source: str) -> None:
        positive = [f.name for f in dataclasses.fields(self) if f.type in ("int", "float")
                    and f.name not in ("launch_overhead_ns", "step_overhead_ns", "jitter", "nvls", "comm_compute_share",
                                       "intra_node_latency_ns", "inter_node_latency_ns")]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # Finite, and counts within int32: a spec of 1e400 or 10**30 links is damage, not hardware.
            if f.type == "float" and not math.isfinite(value) or f.type == "int" and not -2**31 < value < 2**31:
                raise SpecError(f"hardware spec {source}: '{f.name}' is {value!r}, not a value hardware has")
        for name in positive:
            if not getattr(self, name) > 0:
                raise SpecError(f"hardware spec {source}: '{name}' must be > 0, got {getattr(self, name)}")
        for name in ("matmul_efficiency", "vector_efficiency", "memory_efficiency", "comm_efficiency",
                     "activation_hbm_fraction", "nvls", "comm_compute_share"):
            if getattr(self, name) > 1:
                raise SpecError(f"hardware spec {source}: '{name}' is a fraction, at most 1")
        for xs, ys in (("gemm_rows", ("gemm_efficiency",)),
                       ("attention_context", ("attention_prefill_efficiency", "attention_decode_efficiency"))):
            x = np.asarray(getattr(self, xs))
            if not np.isfinite(x).all() or (x <= 0).any() or (np.diff(x) <= 0).any():
                raise SpecError(f"hardware spec {source}: '{xs}' must be positive and increasing")
            for name in ys:
                y = np.asarray(getattr(self, name))
                if len(y) != len(x):
                    raise SpecError(f"hardware spec {source}: '{name}' needs one value per '{xs}' ({len(x)}), "
                                    f"got {len(y)}")
                if not np.isfinite(y).all() or (y <= 0).any() or (y > 1).any():
                    raise SpecError(f"hardware spec {source}: '{name}' holds fractions in (0, 1]")


def hardware_presets() -> list[str]:
    """Names of the hardware presets shipped with sohuprof."""
    return preset_names("hardware", ".toml")


def load_hardware(name_or_path: str | Path) -> HardwareSpec:
    """Load a hardware preset by name (``sohu``, ``h100``...) or a user's TOML file by path."""
    _, raw = read_preset("hardware", ".toml", name_or_path, what="hardware", hint="give a .toml file")
    source = str(name_or_path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"hardware spec {source} is not valid TOML: {exc}") from None
    return HardwareSpec.from_dict(data, source=source)
