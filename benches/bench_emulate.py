"""Emulator throughput: trace records produced per second, in memory and written to disk.

Target (issue 2): at least 2M records/s on one core; a 2-node x 8-chip Llama-70B run of 64
requests in seconds.

    python benches/bench_emulate.py            # the default set
    python benches/bench_emulate.py --quick    # one small config
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from sohuprof.emulator import EmulatorConfig, emulate
from sohuprof.emulator.runtime import Emulation
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model

TARGET = 2_000_000

CASES = [
    ("llama3-70b 2x8 tp8, 64 req", dict(model="llama3-70b", nodes=2, tp=8, requests=64)),
    ("llama3-70b 1x8 tp8, 512 req", dict(model="llama3-70b", nodes=1, tp=8, requests=512)),
    ("mixtral-8x7b 2x8 tp8 ep8, 64 req", dict(model="mixtral-8x7b", nodes=2, tp=8, ep=8, requests=64)),
    ("deepseek-v3 2x8 tp1 ep16, 32 req", dict(model="deepseek-v3", nodes=2, tp=1, ep=16, requests=32, prompt_len=1024)),
    ("llama3-8b 16x8 tp8, 256 req", dict(model="llama3-8b", nodes=16, tp=8, requests=256, prompt_len=1024)),
]


def config(model: str, **kw: object) -> EmulatorConfig:
    return EmulatorConfig(model=load_model(model), hardware=load_hardware("sohu"), **kw)  # type: ignore[arg-type]


def bench(name: str, cfg: EmulatorConfig) -> None:
    t = time.perf_counter()
    records = sum(len(trace.rank) for trace, _ in Emulation(cfg).steps())
    sim = time.perf_counter() - t
    out = Path(tempfile.mkdtemp()) / "run"
    t = time.perf_counter()
    summary = emulate(cfg, out, show_progress=False)
    total = time.perf_counter() - t
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out.parent)
    rate = summary.records / total
    print(f"{name:36s} {records:>11,} rec  simulate {sim:6.2f} s ({records / sim / 1e6:5.2f} M/s)  "
          f"with write {total:6.2f} s ({rate / 1e6:5.2f} M/s, {rate / TARGET:4.2f}x target)  "
          f"{size / 1e6:7.1f} MB  {summary.tokens_per_s:>9,.0f} tok/s emulated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"target: {TARGET / 1e6:.0f} M records/s (single process)")
    for name, kw in CASES[:1] if args.quick else CASES:
        bench(name, config(**kw))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
