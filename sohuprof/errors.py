"""The exceptions sohuprof raises for problems a user can fix.

Every error the CLI turns into one line on stderr derives from :class:`SohuprofError`; anything
else is a bug and keeps its traceback (shown with ``-v``).
"""

from __future__ import annotations

__all__ = ["SohuprofError", "SpecError", "TraceFormatError", "SchemaError", "StoreError", "OutputError", "QueryError"]


class SohuprofError(Exception):
    """Base of every error caused by input the user can fix."""


class SpecError(SohuprofError):
    """A hardware, model, parallel-plan, workload or fault specification is invalid."""


class TraceFormatError(SohuprofError):
    """A trace file is not in a format sohuprof reads, or is damaged beyond recovery."""


class NotATraceError(TraceFormatError):
    """A file is readable but holds no trace (a sidecar JSON beside the traces, say): in a
    directory of traces it is skipped with a warning, on its own it is an error."""


class SchemaError(SohuprofError):
    """A table does not match the trace-store schema."""


class StoreError(SohuprofError):
    """A trace store is missing, incomplete or of an unsupported version."""


class OutputError(SohuprofError):
    """An output path cannot be written (exists, not writable, not a directory)."""


class QueryError(SohuprofError):
    """A ``sohuprof query`` statement is not a read-only query, or DuckDB rejects it."""
