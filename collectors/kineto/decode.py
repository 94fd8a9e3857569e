"""Decoding a trace file: gzip, the typed and loose msgspec decoders, repair of damaged text."""

from __future__ import annotations

import io
import logging
import re
import zlib
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
from isal import igzip, isal_zlib

from sohuprof.collectors.kineto.checks import MAX_ID, MAX_NELEMS, MAX_NS

from sohuprof.errors import NotATraceError, TraceFormatError

log = logging.getLogger("sohuprof.collectors.kineto")


_EXPECTED = "expected a PyTorch profiler (Kineto) or Chrome trace JSON (.json or .json.gz)"


#: Top-level keys only Kineto writes.
_KINETO_KEYS = ("schemaVersion", "distributedInfo", "deviceProperties", "baseTimeNanoseconds")


#: A cut-off entry's text that says it was a complete event.
_CUT_X = re.compile(rb'"ph"\s*:\s*"X"')


# Exponents are matched too (so the tokens still pair one for one with the events), though only
# plain decimals are re-read exactly.
_TS_TOKEN = re.compile(rb'"ts"\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?=\s*[,}])')


# Ranges the typed decoder enforces itself (kineto_checks has the reasons): a value outside
# one fails the typed decode, and the loose path then finds and sets aside its event.
_I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


_DEVICE = Annotated[int, msgspec.Meta(ge=-MAX_ID, lt=MAX_ID)]


_NELEMS = Annotated[int, msgspec.Meta(lt=MAX_NELEMS)]


_FLOPS = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | Annotated[float, msgspec.Meta(ge=0, lt=2.0**63)]


_DUR_US = Annotated[float, msgspec.Meta(ge=0, lt=MAX_NS / 1000)]


class _Args(msgspec.Struct, frozen=True, gc=False):
    """The ``args`` keys sohuprof reads."""

    correlation: _I64 | None = None
    stream: _I64 | str | None = None
    device: _DEVICE | None = None
    flops: _FLOPS | None = None
    name: Any = None  # of thread_name / process_name metadata
    collective: str | None = msgspec.field(default=None, name="Collective name")
    group: str | None = msgspec.field(default=None, name="Process Group Name")
    nelems: _NELEMS | None = msgspec.field(default=None, name="In msg nelems")
    dtype: str | None = None
    group_size: _DEVICE | None = msgspec.field(default=None, name="Group size")
    group_ranks: str | None = msgspec.field(default=None, name="Process Group Ranks")
    src: _DEVICE | None = msgspec.field(default=None, name="Src Rank")     # of a send / recv
    dst: _DEVICE | None = msgspec.field(default=None, name="Dst Rank")
    # A memcpy / memset's size; HIP runtime calls write it as a string, and it is never a reason
    # to set an event aside (unreadable is unknown).
    nbytes: Any = msgspec.field(default=None, name="bytes")


_NO_ARGS = _Args()


class _Event(msgspec.Struct, gc=False):
    ph: str | None = None
    cat: str | None = None
    name: str | None = None
    pid: _I64 | str | None = None
    tid: _I64 | str | None = None
    ts: float | None = None  # ints are read as floats (exact below 2**53)
    dur: _DUR_US | None = None
    args: _Args | None = _NO_ARGS


class _Trace(msgspec.Struct, gc=False):
    """The JSON Object Format: ``traceEvents`` and the top-level keys only Kineto writes."""

    traceEvents: list[_Event] | None = None  # noqa: N815 (the JSON key)
    schemaVersion: Any = msgspec.UNSET  # noqa: N815
    distributedInfo: Any = msgspec.UNSET  # noqa: N815
    deviceProperties: Any = msgspec.UNSET  # noqa: N815
    baseTimeNanoseconds: Any = msgspec.UNSET  # noqa: N815
    host_name: Any = msgspec.UNSET


class _LooseArgs(msgspec.Struct, frozen=True, gc=False):
    """:class:`_Args` with any JSON value in each field."""

    correlation: Any = None
    stream: Any = None
    device: Any = None
    flops: Any = None
    name: Any = None
    collective: Any = msgspec.field(default=None, name="Collective name")
    group: Any = msgspec.field(default=None, name="Process Group Name")
    nelems: Any = msgspec.field(default=None, name="In msg nelems")
    dtype: Any = None
    group_size: Any = msgspec.field(default=None, name="Group size")
    group_ranks: Any = msgspec.field(default=None, name="Process Group Ranks")
    src: Any = msgspec.field(default=None, name="Src Rank")
    dst: Any = msgspec.field(default=None, name="Dst Rank")
    nbytes: Any = msgspec.field(default=None, name="bytes")


_NO_LOOSE_ARGS = _LooseArgs()


_ARGS_TYPES = (_Args, _LooseArgs)


#: JSON scalars (hashable, unlike lists and objects).
_SCALARS = (int, float, str, type(None))


class _LooseEvent(msgspec.Struct, gc=False):
    """:class:`_Event` with any JSON value in each field (``args`` of any shape)."""

    ph: Any = None
    cat: Any = None
    name: Any = None
    pid: Any = None
    tid: Any = None
    ts: Any = None
    dur: Any = None
    args: _LooseArgs | list[Any] | str | int | float | bool | None = _NO_LOOSE_ARGS


class _LooseTrace(msgspec.Struct, gc=False):
    traceEvents: list[_LooseEvent] | None = None  # noqa: N815 (the JSON key)
    schemaVersion: Any = msgspec.UNSET  # noqa: N815
    distributedInfo: Any = msgspec.UNSET  # noqa: N815
    deviceProperties: Any = msgspec.UNSET  # noqa: N815
    baseTimeNanoseconds: Any = msgspec.UNSET  # noqa: N815
    host_name: Any = msgspec.UNSET


class _CounterEvent(msgspec.Struct, gc=False):
    """A counter's series are arbitrary ``args`` keys: kept raw, decoded for counters only."""

    args: msgspec.Raw = msgspec.Raw(b"null")


class _CounterTrace(msgspec.Struct, gc=False):
    traceEvents: list[_CounterEvent] | None = None  # noqa: N815


_DECODER = msgspec.json.Decoder(_Trace | list[_Event])


_LOOSE_DECODER = msgspec.json.Decoder(_LooseTrace | list[_LooseEvent])


_COUNTER_DECODER = msgspec.json.Decoder(_CounterTrace | list[_CounterEvent])


_Doc = _Trace | list[_Event] | _LooseTrace | list[_LooseEvent]


#: Bytes a .json.gz may always inflate to; past that, 64x its compressed size.
GZIP_MIN_CAP = 1 << 30


def _load(path: Path) -> tuple[_Doc, bytes, bool, bytes]:
    """Decode a (possibly gzipped) trace.

    Returns the document, the JSON text it came from, whether it was decoded loosely (some
    field has a type a sound trace never writes; see :func:`_decode`), and the cut-off tail
    of a JSON Array Format file that ends inside an entry (``b""`` for a whole file).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceFormatError(f"cannot read '{path}': {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        # JSON compresses 10-30x; a file that inflates past 64x (at least 1 GiB) is a bomb or
        # damage, refused before it can take the machine's memory.
        cap = max(GZIP_MIN_CAP, 64 * len(raw))
        try:
            with igzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
                text = gz.read(cap + 1)
        except (OSError, EOFError, zlib.error, isal_zlib.error) as exc:
            raise TraceFormatError(f"'{path}' is a damaged gzip file ({exc}); {_EXPECTED}") from None
        if len(text) > cap:
            raise TraceFormatError(f"'{path}' inflates to more than {cap:,} bytes ({cap // len(raw)}x its size), "
                                   f"which no trace does: a damaged or hostile gzip file")
        raw = text
    try:
        doc, loose = _decode(path, raw)
        return doc, raw, loose, b""
    except msgspec.DecodeError as exc:
        repaired = _repair_text(path, raw, exc)
        if repaired is not None:   # one bad name must not cost the file its sound events
            return _load_text(path, repaired)
        # The Chrome JSON Array Format allows leaving off the closing bracket.
        body = raw.rstrip().rstrip(b",")
        if body.lstrip()[:1] == b"[" and not body.endswith(b"]"):
            try:
                doc, loose = _decode(path, body + b"]")
                return doc, body + b"]", loose, b""
            except msgspec.DecodeError:
                pass
            # A writer that died mid-entry (why the format allows the missing bracket): keep
            # the whole entries, and the cut one's tail to count. Only for a cut, never for
            # damage inside the text, which would drop sound entries after it.
            if "truncated" in str(exc):
                cut = _cut_entries(path, body)
                if cut is not None:
                    return cut
        raise TraceFormatError(f"'{path}' is not JSON ({exc}); {_EXPECTED}") from None


#: A lone UTF-16 surrogate escape (JSON allows writing one; no UTF-8 decoder takes it).
_LONE_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                             rb"|(?<![dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


#: Control bytes JSON forbids inside strings (tab, newline and carriage return are whitespace).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _repair_text(path: Path, raw: bytes, exc: msgspec.DecodeError) -> bytes | None:
    """The text with invalid UTF-8, lone surrogate escapes and raw control bytes replaced (by
    U+FFFD and spaces), when that is what failed to decode; else None. Said in one log line."""
    if not any(word in str(exc) for word in ("UTF-8", "surrogate", "control character", "invalid character")):
        return None
    text = raw.decode("utf-8", errors="replace").encode()
    text = _LONE_SURROGATE.sub(rb"\\ufffd", text)
    text = _CONTROL.sub(b" ", text)
    if text == raw:
        return None
    log.warning("%s: replaced invalid text (bad UTF-8, lone surrogates, control bytes) in names with "
                "U+FFFD; the events are kept", path)
    return text


def _load_text(path: Path, raw: bytes) -> tuple[_Doc, bytes, bool, bytes]:
    try:
        doc, loose = _decode(path, raw)
    except msgspec.DecodeError as exc:
        raise TraceFormatError(f"'{path}' is not JSON ({exc}); {_EXPECTED}") from None
    return doc, raw, loose, b""


def _cut_entries(path: Path, body: bytes, attempts: int = 16) -> tuple[_Doc, bytes, bool, bytes] | None:
    """Decode the whole entries of an Array Format text cut inside its last entry.

    The last entry that closes is found by trying the last few ``}`` that a comma follows (an
    entry's end, or an object inside one; braces inside names such as ``{lambda()#1}`` are
    never followed by one), then the last few ``}`` of any kind; None if none gives valid JSON.
    """
    start = max(0, len(body) - (1 << 20))   # no entry is a megabyte long
    ends = [start + m.start() for m in re.finditer(rb"\}\s*,", body[start:])][::-1][:attempts]
    end = len(body)
    for _ in range(attempts):
        brace = body.rfind(b"}", 0, end)
        if brace < 0:
            break
        ends.append(brace)
        end = brace
    for brace in dict.fromkeys(ends):   # each candidate once, commas first
        head = body[:brace + 1] + b"]"
        try:
            doc, loose = _decode(path, head)
        except msgspec.DecodeError:
            continue
        return doc, head, loose, body[brace + 1:].lstrip().lstrip(b",").lstrip()
    return None


def _decode(path: Path, text: bytes) -> tuple[_Doc, bool]:
    """Decode typed; if a field's type is wrong, decode loosely (the damaged-file path only).

    Raises ``msgspec.DecodeError`` for text that is not JSON, :class:`TraceFormatError` for
    JSON that is not a trace.
    """
    try:
        return _DECODER.decode(text), False
    except msgspec.ValidationError:
        pass
    try:
        return _LOOSE_DECODER.decode(text), True
    except msgspec.ValidationError as exc:
        _explain(path, text, exc)


def _explain(path: Path, text: bytes, exc: msgspec.ValidationError) -> NoReturn:
    """Say why JSON the loose decoder rejected is not a trace (the error path only)."""
    try:
        doc = msgspec.json.decode(text)
    except msgspec.DecodeError as err:  # a syntax error past the first type error
        raise TraceFormatError(f"'{path}' is not JSON ({err}); {_EXPECTED}") from None
    except msgspec.ValidationError as err:  # JSON that no decoder takes: 1e400, say
        raise TraceFormatError(f"'{path}' holds a value JSON decoders refuse ({err}); the file is "
                               f"damaged: re-export it from the profiler") from None
    if not (isinstance(doc, list) or isinstance(doc, dict) and isinstance(doc.get("traceEvents"), list)):
        kind = "an object without a 'traceEvents' list" if isinstance(doc, dict) else type(doc).__name__
        raise NotATraceError(f"'{path}' is JSON but not a trace: {kind}; {_EXPECTED}")
    try:
        msgspec.convert(doc["traceEvents"] if isinstance(doc, dict) else doc, list[dict])
    except msgspec.ValidationError:
        raise TraceFormatError(f"'{path}': 'traceEvents' holds entries that are not objects; "
                               f"{_EXPECTED}") from None
    raise TraceFormatError(f"'{path}' cannot be read as a trace ({exc}); {_EXPECTED}")
