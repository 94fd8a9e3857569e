"""The trace store's tables, as data: every column with its Arrow type, unit and meaning.

Arrow schemas, validation and the docs are generated from these specs, so a column is described
in exactly one place (after Perfetto's table definitions). Times are int64 ns on one aligned
clock (``ts``, ``dur``, ``*_ns``); byte counts end in ``_bytes``; names are dictionary-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from sohuprof.errors import SchemaError

__all__ = ["ColumnSpec", "TableSpec", "EVENTS", "COLLECTIVES", "COUNTERS", "REQUESTS",
           "QUARANTINE", "ALL_TABLES", "STORE_FORMAT", "STORE_VERSION", "OP_CLASSES", "CATEGORIES"]

STORE_FORMAT = "sohuprof-trace"
STORE_VERSION = 1

#: Op classes an event's ``op`` may take; analyses key their rooflines on these.
OP_CLASSES = ("gemm", "attention", "norm", "elementwise", "embedding", "sampling", "router",
              "memcpy", "memset", "all_reduce", "all_gather", "reduce_scatter", "all_to_all",
              "broadcast", "send", "recv", "host", "other")
#: Event categories; the stall partition and HTA's temporal breakdown are built on these.
CATEGORIES = ("compute", "communication", "memory", "host")

_DICT_STR = pa.dictionary(pa.int32(), pa.string())


@dataclass(frozen=True)
class ColumnSpec:
    """One column: name, Arrow type, unit ('' for none), whether null is allowed, and its meaning."""

    name: str
    type: pa.DataType
    unit: str
    doc: str
    nullable: bool = True
    #: Columns added after the first store layout are nullable and may be absent from older
    #: stores' files, which then read them as null.
    optional: bool = False

    def field(self) -> pa.Field:
        return pa.field(self.name, self.type, nullable=self.nullable,
                        metadata={"unit": self.unit, "doc": self.doc})


@dataclass(frozen=True)
class TableSpec:
    """One table of the store: where it lives, what a row is, and its columns."""

    name: str
    path: str
    row: str
    columns: tuple[ColumnSpec, ...]
    sort_by: tuple[str, ...] = ()

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([c.field() for c in self.columns], metadata={"table": self.name, "row": self.row})

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def conform(self, table: pa.Table) -> pa.Table:
        """Return ``table`` with this spec's columns, order and types; missing nullable columns
        become null (never invented), missing required ones raise :class:`SchemaError`."""
        arrays = []
        for col in self.columns:
            if col.name in table.column_names:
                arr = table.column(col.name)
                if not arr.type.equals(col.type):
                    try:
                        arr = arr.cast(col.type)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        raise SchemaError(f"table '{self.name}': column '{col.name}' is {arr.type}, "
                                          f"expected {col.type}: {exc}") from None
            elif col.nullable:
                arr = pa.nulls(table.num_rows, col.type)
            else:
                raise SchemaError(f"table '{self.name}': required column '{col.name}' is missing")
            if not col.nullable and arr.null_count:
                raise SchemaError(f"table '{self.name}': column '{col.name}' has {arr.null_count} nulls")
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def empty(self) -> pa.Table:
        """A table with no rows and this spec's schema."""
        return self.schema.empty_table()


def _c(name: str, type_: pa.DataType, unit: str, doc: str, nullable: bool = True,
       optional: bool = False) -> ColumnSpec:
    return ColumnSpec(name, type_, unit, doc, nullable, optional)


EVENTS = TableSpec(
    name="events", path="events", row="op or kernel on one rank",
    sort_by=("rank", "ts"),
    columns=(
        _c("ts", pa.int64(), "ns", "start, on the store's one aligned clock", False),
        _c("dur", pa.int64(), "ns", "duration", False),
        _c("node", pa.int32(), "", "node index (the events/ partition key)", False),
        _c("chip", pa.int32(), "", "chip (or GPU) index within its node", False),
        _c("rank", pa.int32(), "", "global rank: node * chips_per_node + chip for Sohu runs", False),
        _c("track", _DICT_STR, "", "engine (matrix, vector, dma, collective, host) or GPU stream / CPU thread", False),
        _c("name", _DICT_STR, "", "op or kernel name", False),
        _c("op", _DICT_STR, "", f"op class: one of {', '.join(OP_CLASSES)}", False),
        _c("category", _DICT_STR, "", f"one of {', '.join(CATEGORIES)}", False),
        _c("layer", pa.int32(), "", "decoder layer; null outside layers"),
        _c("step", pa.int64(), "", "scheduler step or ProfilerStep; null where unknown"),
        _c("phase", _DICT_STR, "", "prefill, decode or mixed; null where unknown"),
        _c("flops", pa.int64(), "FLOP", "floating-point operations; null where the source has none"),
        _c("hbm_bytes", pa.int64(), "bytes", "bytes moved to or from device memory; null where unknown"),
        _c("net_bytes", pa.int64(), "bytes", "collective buffer bytes on this rank (nccl-tests 'size': the all-reduce buffer, all-gather output, all-to-all send buffer); 0 for other ops, null where unknown"),
        _c("stall_mem_ns", pa.int64(), "ns", "part of dur the compute units waited on memory; null where unknown"),
        _c("coll_id", pa.int64(), "", "collective instance (joins collectives.coll_id); null for non-collectives"),
        _c("correlation", pa.int64(), "", "links a GPU kernel to the CPU op that launched it (Kineto); null otherwise"),
        _c("cat", _DICT_STR, "", "the source's own event category, as written (Kineto's cat: kernel, gpu_memcpy, "
           "cuda_runtime, cpu_op, user_annotation, mtia_ccp_events, ...); null for Sohu runs", optional=True),
        _c("stream", pa.int64(), "", "GPU stream (Kineto's args.stream) of a device event; null for CPU events and "
           "Sohu runs", optional=True),
    ),
)

COLLECTIVES = TableSpec(
    name="collectives", path="collectives.parquet", row="collective instance x participating rank",
    sort_by=("coll_id", "rank"),
    columns=(
        _c("coll_id", pa.int64(), "", "collective instance (joins events.coll_id)", False),
        _c("kind", _DICT_STR, "", "all_reduce, all_to_all, all_gather, send/recv ...", False),
        _c("group", pa.int64(), "", "communicator / group id", False),
        _c("rank", pa.int32(), "", "participating rank", False),
        _c("node", pa.int32(), "", "node of the rank", False),
        _c("arrive", pa.int64(), "ns", "when this rank entered the collective", False),
        _c("start", pa.int64(), "ns", "when the transfer began: the last member's arrival", False),
        _c("end", pa.int64(), "ns", "when this rank left the collective", False),
        _c("bytes", pa.int64(), "bytes", "this rank's buffer bytes (nccl-tests 'size'); link traffic follows from kind and group size"),
    ),
)

COUNTERS = TableSpec(
    name="counters", path="counters.parquet", row="counter sample",
    sort_by=("rank", "ts"),
    columns=(
        _c("ts", pa.int64(), "ns", "sample time: a scheduler step's start for prefill_tokens and decode_tokens, "
           "its end for the nic_* counters", False),
        _c("rank", pa.int32(), "", "rank the counter belongs to (a step's token counts: its replica's first rank)", False),
        _c("counter", _DICT_STR, "", "counter name: prefill_tokens, decode_tokens (tokens of a scheduler step's "
           "batch); per Sohu chip and step, its NIC port counters (its share of the node's NIC; bytes by nccl's "
           "conventions, only what crosses nodes): nic_tx_bytes (bytes it sent to other nodes), nic_tx_ns (time "
           "its port spent sending them at its own line rate), nic_wait_ns (the rest of the transfers it sent "
           "in: the far end or the group's slowest NIC holding it back), nic_rx_bytes (bytes it received from "
           "other nodes), nic_rx_ns (time its port spent receiving them at its own line rate); a chip that "
           "moved nothing across nodes in a step has no nic_* samples for it", False),
        _c("value", pa.float64(), "", "sample value: tokens, bytes or ns as the counter name says (the nic_* "
           "counters count over one step, not since boot)", False),
    ),
)

REQUESTS = TableSpec(
    name="requests", path="requests.parquet", row="served request",
    sort_by=("arrival",),
    columns=(
        _c("request_id", pa.int64(), "", "request id", False),
        _c("replica", pa.int32(), "", "model replica that served it"),
        _c("arrival", pa.int64(), "ns", "arrival at the server", False),
        _c("first_token", pa.int64(), "ns", "first output token produced; null if never"),
        _c("finish", pa.int64(), "ns", "last output token produced; null if unfinished"),
        _c("prompt_tokens", pa.int64(), "tokens", "input tokens", False),
        _c("output_tokens", pa.int64(), "tokens", "output tokens produced", False),
    ),
)

QUARANTINE = TableSpec(
    name="quarantine", path="quarantine.parquet", row="piece of input that could not be read",
    columns=(
        _c("source", pa.string(), "", "input file, relative to the collected input", False),
        _c("offset", pa.int64(), "bytes", "byte offset of the damaged piece in the file", False),
        _c("length", pa.int64(), "bytes", "length of the damaged piece", False),
        _c("records", pa.int64(), "", "records of the input counted as quarantined in this piece (its share of "
           "the missing records its bytes could hold; 0 for garbage, duplicates and foreign data); the column "
           "sums to the manifest's counts.quarantined_records (+ host_events.quarantined)", False),
        _c("reason", pa.string(), "", "why it was set aside", False),
        _c("raw", pa.binary(), "", "the bytes themselves: at most 16 MiB a piece and 256 MiB a collect "
           "(shorter than 'length' past that; the rest stays in the source file at 'offset')", False),
    ),
)

#: Every table of the store (keep sorted by name).
ALL_TABLES = (COLLECTIVES, COUNTERS, EVENTS, QUARANTINE, REQUESTS)
