"""What each event is: device or host, op class, category, track, ProfilerStep."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.collectors.kineto.columns import _factorize, _int_values, _objects
from sohuprof.collectors.kineto.decode import _ARGS_TYPES, _SCALARS, _Event

from sohuprof.schema import CATEGORIES, OP_CLASSES

#: Event categories only Kineto writes (for old Kineto files without the top-level keys).
_KINETO_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "cpu_op", "cuda_runtime", "cuda_driver",
                "gpu_user_annotation", "python_function", "mtia_ccp_events", "mtia_runtime"}


#: Device-side event categories: they sit on a stream track (MTIA's device events are
#: ``mtia_ccp_events``, its DMA transfers among them, named ``dma_*``).
_GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation", "mtia_ccp_events")


#: Device kernels that are memory transfers by name (HTA's MemoryKernelGroupingPattern).
_MEMORY_KERNEL_RE = r"^(hip)?Memcpy|^(hip)?Memset|^dma"


#: Kineto's span over the whole profiling session: not an op.
_SKIP_CATS = ("Trace",)


_OP_INDEX = {op: i for i, op in enumerate(OP_CLASSES)}


_CAT_INDEX = {c: i for i, c in enumerate(CATEGORIES)}


_OTHER = _OP_INDEX["other"]


#: Where an event ran (see :func:`_cat_kind`), and the op class and category each kind implies
#: (kernels take theirs from the name, NCCL kernels are communication).
_KINDS = ("kernel", "gpu_memcpy", "gpu_memset", "gpu_annotation", "host")


_HOST = _KINDS.index("host")


_MEMORY_OP = np.array([_OP_INDEX[o] for o in ("other", "memcpy", "memset", "host", "host")], np.int8)


_CATEGORY_OF_KIND = np.array([_CAT_INDEX[c] for c in ("compute", "memory", "memory", "host", "host")],
                             np.int8)


# Op class of a compute kernel by name: the first pattern that matches wins (attention before
# gemm: fused attention kernels are often cutlass GEMMs underneath). Convolutions count as gemm
# (implicit GEMM on tensor cores), cuDNN batch-norm kernels (bn_fw/bn_bw) as norm.
_OP_PATTERNS = (
    ("attention", r"flash|fmha|attention|attn|sdpa"),
    ("norm", r"norm|bn_fw|bn_bw"),
    ("gemm", r"gemm|cutlass|xmma|cublas|matmul|conv|scudnn|wgrad|dgrad|fprop"),
    ("embedding", r"embedding"),
    ("router", r"router|moe_align|gating"),
    ("sampling", r"topk|top_k|multinomial|sampl|argmax"),
    ("elementwise", r"elementwise|pointwise|triton_poi|reduce|softmax|multi_tensor_apply"
                    r"|catarray|copy|fill|nchwtonhwc|nhwctonchw|transpose|relu|gelu|silu"
                    r"|sigmoid|tanh|dropout|activation|cast"),
)


# Collective kind from an NCCL kernel name or a ``Collective name`` arg, underscores removed.
_COLL_PATTERNS = (
    ("all_reduce", r"allreduce"),
    ("all_gather", r"allgather"),
    ("reduce_scatter", r"reducescatter"),
    ("all_to_all", r"alltoall"),
    ("broadcast", r"broadcast"),
    ("recv", r"^recv|recv$"),
    ("send", r"send"),
)


_STEP_RE = r"^ProfilerStep#(?P<step>\d+)$"


def _cat_kind(cat: str) -> str:
    """Where a Kineto category runs: one of the GPU kinds, or host."""
    return {"kernel": "kernel", "gpu_memcpy": "gpu_memcpy", "gpu_memset": "gpu_memset",
            "gpu_user_annotation": "gpu_annotation", "mtia_ccp_events": "kernel"}.get(cat, "host")


def _classify(values: pa.Array, patterns: tuple[tuple[str, str], ...], default: str) -> np.ndarray:
    """Label each (unique) string by the first regex that matches it, case-insensitively."""
    labels = np.full(len(values), default, dtype=object)
    unset = np.ones(len(values), dtype=bool)
    for label, pattern in patterns:
        hit = pc.match_substring_regex(values, pattern, ignore_case=True).fill_null(False)
        hit = hit.to_numpy(zero_copy_only=False) & unset
        labels[hit] = label
        unset &= ~hit
    return labels


def _op_codes(labels: np.ndarray) -> np.ndarray:
    """OP_CLASSES indices of op class names."""
    return np.array([_OP_INDEX[label] for label in labels.tolist()], dtype=np.int8)


def _tracks(fmt: str, meta: Sequence[_Event], is_gpu: np.ndarray, chip: np.ndarray,
            pid: list[Any], tid: list[Any], stream: list[Any]) -> pa.DictionaryArray:
    """Track labels, built once per distinct (gpu, chip, pid, stream-or-tid).

    ``meta`` holds the metadata (``M``) events of a Chrome trace: its thread and process names.
    """
    stream_o = _objects(stream)
    lane = np.where(is_gpu & (stream_o != None), stream_o, _objects(tid))  # noqa: E711 (elementwise)
    lane_codes, lanes = pd.factorize(lane, use_na_sentinel=False)
    pid_codes, pids = _factorize(pid)
    chips = int(chip.max(initial=0)) + 1
    if 2 * chips * len(pids) * len(lanes) >= 2**63:
        # A mixed-radix key would wrap int64: number the chips densely first.
        _, dense = np.unique(chip, return_inverse=True)
        chips, chip_key = int(dense.max(initial=0)) + 1, dense.reshape(-1)
    else:
        chip_key = chip
    key = (is_gpu.astype(np.int64) * chips + chip_key) * len(pids) + pid_codes
    if int(key.max(initial=0)) * len(lanes) >= 2**63 - len(lanes):
        _, key = np.unique(key, return_inverse=True)
        key = key.reshape(-1).astype(np.int64)
    key = key * len(lanes) + lane_codes
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    multi_gpu = np.unique(chip[is_gpu]).size > 1
    thread_names: dict[tuple[Any, Any], str] = {}
    process_names: dict[Any, str] = {}
    if fmt == "chrome":
        # Metadata events are not checked as records are: skip unusable ones here.
        named = [m for m in meta if isinstance(m.args, _ARGS_TYPES)
                 and isinstance(m.pid, _SCALARS) and isinstance(m.tid, _SCALARS)]
        thread_names = {(m.pid, m.tid): str(m.args.name) for m in named if m.name == "thread_name"}
        process_names = {m.pid: str(m.args.name) for m in named if m.name == "process_name"}
    several_pids = len(pids) > 1
    labels = []
    for i in first:  # one per distinct track, not per event
        if is_gpu[i]:
            label = f"stream {lane[i]}"
            label = f"gpu {chip[i]} {label}" if multi_gpu else label
        else:
            label = thread_names.get((pid[i], tid[i])) or f"thread {tid[i]}"
            if fmt == "chrome" and several_pids:
                label = f"{process_names.get(pid[i]) or f'pid {pid[i]}'}: {label}"
        labels.append(label)
    # Equal labels from distinct keys share one dictionary entry.
    label_codes, label_values = pd.factorize(np.array(labels, dtype=object))
    return pa.DictionaryArray.from_arrays(pa.array(label_codes[inverse].astype(np.int32)),
                                          pa.array(label_values.astype(str), pa.string()))


def _steps(uniq_names: pa.Array, name_codes: np.ndarray, ts: np.ndarray, dur: np.ndarray) -> pa.Array:
    """ProfilerStep number of the window [ts, ts + dur) holding each event's ts; null outside."""
    step_of_name = pc.extract_regex(uniq_names, _STEP_RE)
    numbers = pc.struct_field(step_of_name, "step").cast(pa.int64()).to_numpy(zero_copy_only=False)
    numbers = np.where(pc.is_valid(step_of_name).to_numpy(zero_copy_only=False), numbers, -1)
    per_event = numbers[name_codes] if len(numbers) else np.full(len(ts), -1)
    windows = np.flatnonzero(per_event >= 0)
    if windows.size == 0:
        return pa.nulls(len(ts), pa.int64())
    order = windows[np.argsort(ts[windows], kind="stable")]
    starts, ends, nums = ts[order], ts[order] + dur[order], per_event[order]
    j = np.searchsorted(starts, ts, side="right") - 1
    inside = (j >= 0) & (ts < ends[np.maximum(j, 0)])
    return pa.array(np.where(inside, nums[np.maximum(j, 0)], 0), pa.int64(), mask=~inside)


def _stream_ids(stream: list[Any], is_gpu: np.ndarray) -> pa.Array:
    """``args.stream`` of device events as int64 (a numeric string counts); null elsewhere."""
    out, ok = _int_values(stream)
    ok &= is_gpu
    return pa.array(out, pa.int64(), mask=~ok)
