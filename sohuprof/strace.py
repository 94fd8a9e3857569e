"""The raw Sohu trace format: what the trace unit (here, the emulator) writes and collectors read.

A run directory holds ``run.json`` and, per chip, ``node<N>/chip<C>.strace``::

    file header   FILE_HEADER: magic b"SOHUTRC\\0", version, node, chip, record size, chunk records,
                  run id (16 bytes, also in run.json), CRC32 of the header's first 44 bytes
    chunk*        CHUNK_HEADER: magic b"CHNK", sequence number, record count, CRC32 of the payload
                  seeded with the file's identity (chunk_crc_seed: run id, node, chip)
                  payload: record count x RECORD_DTYPE (little-endian, packed)

The seed binds each chunk to its file: a chunk copied in from another run's or another chip's
file never checks out, even where its sequence number and record count would fit. Chunks are numbered 0, 1, 2 ... in the order written, and every chunk but the last holds exactly
``chunk records``; ``run.json`` lists each chip's records and chunks. Together these say how many
records each chunk must hold, so a reader can account for every record written: kept, set aside
as damaged, or lost (its bytes are not in the file). The run id and the header's node and chip say
which slot of which run a file belongs to, so a file copied from another run or chip is refused.
Version 1 files (a 32-byte header with no run id and no header CRC) are still read.

Times are in the chip's local cycle counter (``run.json`` gives each chip's frequency). Host events
(scheduler steps, request arrival / first token / finish) are JSON lines in ``node<N>/host.jsonl``,
timestamped in ns on the node's local clock.
"""

from __future__ import annotations

import struct
from enum import IntEnum

import numpy as np
from isal import isal_zlib

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "FILE_MAGIC", "CHUNK_MAGIC", "FILE_HEADER", "FILE_HEADER_CRC_SPAN",
    "FILE_HEADER_V1", "RUN_ID_BYTES", "MAX_CHUNK_RECORDS", "CHUNK_HEADER", "RECORD_DTYPE", "NO_LAYER", "NO_GROUP", "Engine", "Phase",
    "chip_path", "host_path", "pack_file_header", "chunk_crc_seed",
]

FORMAT_NAME = "sohu-raw-trace"
FORMAT_VERSION = 2
FILE_MAGIC = b"SOHUTRC\0"
CHUNK_MAGIC = b"CHNK"

#: magic, version, node, chip, record size, records per full chunk, run id, reserved, header CRC32
FILE_HEADER = struct.Struct("<8sHHHHI16s8xI")
#: The bytes of FILE_HEADER its CRC32 covers (all but the CRC itself).
FILE_HEADER_CRC_SPAN = FILE_HEADER.size - 4
#: Version 1's header: magic, version, node, chip, record size, records per full chunk, reserved.
FILE_HEADER_V1 = struct.Struct("<8sHHHHI12x")
RUN_ID_BYTES = 16
#: Records a chunk may hold at most (16 Mi records, 1.2 GB: far above any trace unit's buffer);
#: bounds every buffer a reader sizes from a header.
MAX_CHUNK_RECORDS = 1 << 24
#: magic, sequence number, record count, CRC32 of the payload
CHUNK_HEADER = struct.Struct("<4sIII")

#: One op on one chip. Field order keeps every field naturally aligned (72 bytes, no padding).
RECORD_DTYPE = np.dtype([
    ("start", "<u8"),         # local cycles
    ("end", "<u8"),           # local cycles
    ("flops", "<u8"),
    ("hbm_bytes", "<u8"),
    ("net_bytes", "<u8"),     # collective buffer bytes on this chip (nccl-tests "size"); 0 otherwise
    ("stall_cycles", "<u8"),  # cycles the op's compute waited on memory
    ("name_id", "<u4"),       # index into run.json "op_names"
    ("step", "<u4"),          # scheduler step
    ("group", "<u4"),         # collective group id (run.json "groups"), NO_GROUP otherwise
    ("seq", "<u4"),           # collective sequence number within its group
    ("layer", "<i2"),         # NO_LAYER outside decoder layers
    ("engine", "u1"),         # Engine
    ("phase", "u1"),          # Phase of the step's batch
    ("reserved", "<u4"),
])
assert RECORD_DTYPE.itemsize == 72  # a format constant: checked once at import

NO_LAYER = -1
NO_GROUP = 0xFFFFFFFF


class Engine(IntEnum):
    """The unit an op ran on; ops on different engines of one chip may overlap."""

    MATRIX = 0
    VECTOR = 1
    DMA = 2
    COLLECTIVE = 3
    HOST = 4


class Phase(IntEnum):
    """What the step's batch held: prompt tokens, generated tokens, or both."""

    PREFILL = 0
    DECODE = 1
    MIXED = 2


def chip_path(node: int, chip: int) -> str:
    """Path of a chip's trace file, relative to the run directory."""
    return f"node{node}/chip{chip}.strace"


def host_path(node: int) -> str:
    """Path of a node's host-event file, relative to the run directory."""
    return f"node{node}/host.jsonl"


def pack_file_header(node: int, chip: int, chunk_records: int, run_id: bytes) -> bytes:
    """A version-2 file header, its CRC32 filled in."""
    head = FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, node, chip, RECORD_DTYPE.itemsize, chunk_records,
                            run_id, 0)[:FILE_HEADER_CRC_SPAN]
    return head + struct.pack("<I", isal_zlib.crc32(head))


def chunk_crc_seed(run_id: bytes | None, node: int, chip: int) -> int:
    """The value a file's chunk CRC32s start from: the CRC32 of its identity (0 in version 1)."""
    if run_id is None:
        return 0
    return isal_zlib.crc32(run_id + struct.pack("<HH", node, chip))
