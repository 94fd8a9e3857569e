"""Fixtures of the emulator tests: small seeded runs, in memory and on disk (session-scoped)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # emu_support, whatever pytest's import mode

from emu_support import SMALL_CONFIGS, SMALL_RUN, MemRun, RawRun, make_config, read_run, run_in_memory  # noqa: E402

from sohuprof.emulator import emulate  # noqa: E402

_MEM_CACHE: dict[str, MemRun] = {}


@pytest.fixture(scope="session")
def mem_run() -> Callable[[str], MemRun]:
    """``mem_run(key)``: the in-memory run of ``SMALL_CONFIGS[key]``, built once per session."""

    def get(key: str) -> MemRun:
        if key not in _MEM_CACHE:
            _MEM_CACHE[key] = run_in_memory(make_config(**SMALL_CONFIGS[key]))
        return _MEM_CACHE[key]

    return get


@pytest.fixture(scope="session")
def small_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small emulated run directory written by :func:`sohuprof.emulator.emulate`."""
    out = tmp_path_factory.mktemp("emu") / "run"
    emulate(make_config(**SMALL_RUN), out, show_progress=False)
    return out


@pytest.fixture(scope="session")
def small_run(small_run_dir: Path) -> RawRun:
    """:func:`small_run_dir` read with the reference reader."""
    return read_run(small_run_dir)
