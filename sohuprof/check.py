"""Deep verification of a trace store (``sohuprof check``): checksums, every page, row counts, rank index.

:func:`sohuprof.store.open_store` checks a store cheaply (manifest types, layout, footers and
row-group statistics); :func:`check_store` also reads every byte: each file's CRC-32 against the
one recorded when it was written, every page of every column decoded (row group by row group, so
memory stays bounded by one row group), the decoded values against the schema, the row counts
against the manifest's ``tables`` and the per-rank events and windows against its ``rank_index``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sohuprof.schema import ALL_TABLES, EVENTS, TableSpec
from sohuprof.store import (MANIFEST_NAME, Finding, _checked_columns, _layout, _manifest_problem, _short,
                            _table_files, file_crc32, inspect_store, read_manifest, value_problem)

__all__ = ["CheckReport", "Finding", "check_store"]

PathLike = Union[str, "os.PathLike[str]"]

#: Columns the rank index is rebuilt from.
_INDEX_COLUMNS = ["rank", "chip", "ts", "dur"]


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_store` found.

    Attributes
    ----------
    path : pathlib.Path
        The store.
    findings : tuple of Finding
        One per damaged file (the manifest included), in store order; empty when sound.
    files : int
        Table files read.
    bytes : int
        Bytes of those files.
    rows : dict of str to int
        Rows decoded per table.
    checksums : bool
        Whether the manifest records checksums (stores written before they were added do not:
        their pages are decoded but their bytes cannot be compared).
    """

    path: Path
    findings: tuple[Finding, ...]
    files: int
    bytes: int
    rows: dict[str, int] = field(default_factory=dict)
    checksums: bool = True

    @property
    def ok(self) -> bool:
        """True when nothing is damaged."""
        return not self.findings

    def lines(self) -> list[str]:
        """One line per damaged file, naming it, what is wrong and the fix."""
        return [f.message(self.path) for f in self.findings]


@dataclass
class _Decoded:
    """What decoding one file found: its rows, the first problem, and (events) rank partials."""

    rows: int = 0
    problem: str | None = None
    ranks: list[pd.DataFrame] = field(default_factory=list)


def check_store(path: PathLike) -> CheckReport:
    """Verify a trace store deeply.

    Parameters
    ----------
    path : str or os.PathLike
        The store directory.

    Returns
    -------
    CheckReport
        ``report.ok`` is False when any file is damaged; ``report.findings`` says which and how.

    Raises
    ------
    StoreError
        ``path`` is not a trace store at all (no manifest, not JSON, another format or a newer
        version): there is nothing to check.

    Examples
    --------
    >>> report = check_store("sample_traces/mixtral-2node/store")  # doctest: +SKIP
    >>> report.ok, report.rows["events"]  # doctest: +SKIP
    (True, 74983)
    """
    root = Path(path)
    manifest = read_manifest(root)
    bad_manifest = _manifest_problem(manifest)
    # A manifest of the wrong shape is one finding; the files are still read, expecting nothing.
    usable = manifest if bad_manifest is None else {"format": manifest["format"], "version": manifest["version"]}
    cheap, _ = inspect_store(root, usable)
    findings: dict[str, Finding] = {}
    for f in ([bad_manifest] if bad_manifest else []) + cheap:
        findings.setdefault(f.file, f)
    recorded: dict[str, Any] = usable.get("files") or {}
    files = _files(root)
    rows: dict[str, int] = {}
    partials: list[pd.DataFrame] = []
    total_bytes = 0
    for rel, spec in files:   # a loop over files
        total_bytes += os.stat(root / rel).st_size
        if rel in findings:
            continue
        entry = recorded.get(rel)
        if entry is not None:
            size, crc = file_crc32(root / rel)
            if (size, crc) != (entry["bytes"], entry["crc32"]):
                findings[rel] = Finding(rel, f"fails its checksum (CRC-32 {crc:08x}, {size:,} bytes; written as "
                                             f"{entry['crc32']:08x}, {entry['bytes']:,} bytes): its bytes changed")
                continue
        decoded = _decode(root / rel, spec)
        if decoded.problem is not None:
            findings[rel] = Finding(rel, decoded.problem)
            continue
        rows[spec.name] = rows.get(spec.name, 0) + decoded.rows
        partials += decoded.ranks
    if not findings:
        findings.update({f.file: f for f in _against_manifest(usable, rows, partials)})
    return CheckReport(path=root, findings=tuple(findings.values()), files=len(files), bytes=total_bytes,
                       rows=rows, checksums=bool(recorded))


def _files(root: Path) -> list[tuple[str, TableSpec]]:
    """Every table file present (event parts under ``events/node=N``, then the small tables)."""
    parts, _ = _layout(root)
    return _table_files(root, parts)


def _decode(path: Path, spec: TableSpec) -> _Decoded:
    """Decode every page of ``path``, a row group at a time, checking the values as they come."""
    out = _Decoded()
    checked = _checked_columns(spec)
    group = -1
    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as pf:
            node = int(path.parent.name.split("=", 1)[1]) if spec.name == EVENTS.name else 0
            for group in range(pf.metadata.num_row_groups):   # a loop over row groups, not rows
                table = pf.read_row_group(group, use_threads=True)
                out.rows += table.num_rows
                for name in checked:
                    column = table.column(name)
                    lo = hi = None
                    if pa.types.is_integer(column.type) and column.null_count < len(column):
                        bounds = pc.min_max(column)
                        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
                    problem = value_problem(spec, name, nulls=column.null_count, lo=lo, hi=hi)
                    if problem is not None:
                        out.problem = f"{problem} (row group {group})"
                        return out
                if spec.name == EVENTS.name and table.num_rows:
                    out.ranks.append(_rank_partial(table, node))
    except (pa.ArrowException, OSError, ValueError) as exc:
        where = f"row group {group}: " if group >= 0 else ""
        out.problem = f"does not decode ({where}{_short(exc)})"
    return out


def _rank_partial(table: pa.Table, node: int) -> pd.DataFrame:
    """Per rank of one row group: events, chips seen, first start and last end (hash aggregation)."""
    t = table.select(_INDEX_COLUMNS)
    t = t.append_column("end", pc.add(t.column("ts"), t.column("dur")))
    agg = t.group_by("rank").aggregate([("rank", "count"), ("chip", "min"), ("chip", "max"),
                                        ("ts", "min"), ("end", "max")]).to_pandas()
    agg["node"] = node
    return agg


def _against_manifest(manifest: dict[str, Any], rows: dict[str, int],
                      partials: list[pd.DataFrame]) -> list[Finding]:
    """Row counts against ``tables``, per-rank facts against ``rank_index``."""
    found = []
    tables = manifest.get("tables") or {}
    for spec in ALL_TABLES:
        want = tables.get(spec.name)
        if want is not None and rows.get(spec.name, 0) != want:
            where = EVENTS.path + "/" if spec.name == EVENTS.name else spec.path
            found.append(Finding(where, f"holds {rows.get(spec.name, 0):,} rows where the manifest recorded {want:,}"))
    index = manifest.get("rank_index")
    if isinstance(index, list):
        problem = _index_problem(index, partials)
        if problem is not None:
            found.append(Finding(MANIFEST_NAME, problem))
    return found


def _index_problem(index: list[dict[str, Any]], partials: list[pd.DataFrame]) -> str | None:
    """Does the manifest's rank index say what the events say, rank by rank?"""
    columns = ["rank", "node", "chip", "events", "start_ns", "end_ns"]
    if partials:
        every = pd.concat(partials, ignore_index=True)
        got = every.groupby("rank").agg(
            node_min=("node", "min"), node_max=("node", "max"), chip_min=("chip_min", "min"),
            chip_max=("chip_max", "max"), events=("rank_count", "sum"), start_ns=("ts_min", "min"),
            end_ns=("end_max", "max")).reset_index()
        mixed = got[(got["node_min"] != got["node_max"]) | (got["chip_min"] != got["chip_max"])]
        if len(mixed):
            return f"rank_index cannot hold rank {int(mixed['rank'].iloc[0])}: its events sit on several nodes or chips"
        got = got.rename(columns={"node_min": "node", "chip_min": "chip"})[columns]
    else:
        got = pd.DataFrame({c: pd.Series(dtype="int64") for c in columns})
    want = pd.DataFrame(index, columns=columns)
    merged = got.astype("int64").merge(want.astype("int64"), on="rank", how="outer", suffixes=("", "_manifest"),
                                       indicator=True)
    alone = merged[merged["_merge"] != "both"]
    if len(alone):
        side = "the manifest lists" if alone["_merge"].iloc[0] == "right_only" else "the events hold"
        return f"rank_index disagrees with the events: only {side} rank {int(alone['rank'].iloc[0])}"
    differ = np.column_stack([merged[c].to_numpy() != merged[f"{c}_manifest"].to_numpy() for c in columns[1:]])
    at, which = np.nonzero(differ)
    if len(at):
        row, c = merged.iloc[at[0]], columns[1 + which[0]]
        return (f"rank_index disagrees with the events: rank {int(row['rank'])} {c} is {int(row[c]):,} in the "
                f"events, {int(row[c + '_manifest']):,} in the manifest")
    return None
