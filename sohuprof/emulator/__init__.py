"""The emulated Sohu runtime: serve real transformer configs on a simulated multi-node cluster and
write raw per-chip traces the way a hardware trace unit would.

>>> from sohuprof.emulator import EmulatorConfig, emulate          # doctest: +SKIP
>>> cfg = EmulatorConfig(model=load_model("llama3-8b"), hardware=load_hardware("sohu"), nodes=1)
>>> summary = emulate(cfg, "run")                                   # doctest: +SKIP
"""

from __future__ import annotations

from sohuprof.emulator.config import EmulatorConfig, Fault, parse_fault
from sohuprof.emulator.estimate import RunEstimate, check_run, estimate_run
from sohuprof.emulator.run import RunSummary, emulate

__all__ = ["EmulatorConfig", "Fault", "parse_fault", "RunSummary", "emulate", "RunEstimate", "estimate_run",
           "check_run"]
