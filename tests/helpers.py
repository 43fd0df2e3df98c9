"""Helpers shared by the tests: read a PNG, build a history of N turns, write and read
safetensors bytes by hand (so the core tests need neither numpy nor safetensors).

Import as ``from helpers import …``, like ``fakes`` and ``workers.hardening``: pytest puts
``tests/`` on ``sys.path``; the worker subprocesses get it on ``PYTHONPATH``.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(data: bytes, mode: str | None = None) -> Image.Image:
    """Decode PNG bytes in full (raises on a bad signature or damaged data) into an image,
    converted to ``mode`` when given."""
    data = bytes(data)
    assert data[:8] == PNG_SIGNATURE, "not a PNG (bad signature)"
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # chunk structure and CRCs
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # the pixel stream decodes in full
        return im.convert(mode) if mode else im.copy()


def make_history(
    n: int,
    content: Callable[[int], str],
    start: datetime,
    step: timedelta = timedelta(minutes=1),
    *,
    roles: Sequence[str] = ("user", "assistant"),
    metadata: Callable[[int], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """``n`` turns for ``add_turns``: turn ``i`` says ``content(i)`` at ``start + i * step``,
    its role cycling through ``roles``, with ``metadata(i)`` when given."""
    turns: list[dict[str, Any]] = []
    for i in range(n):
        turn = {"role": roles[i % len(roles)], "content": content(i), "at": start + i * step}
        if metadata is not None:
            turn["metadata"] = metadata(i)
        turns.append(turn)
    return turns


# -- safetensors, by hand ---------------------------------------------------------------------

_FORMATS = {"F32": "f", "F64": "d", "I32": "i", "I64": "q", "U8": "B"}


@dataclass(frozen=True)
class Tensor:
    """One tensor of a safetensors file: its dtype, shape and values (flattened)."""

    dtype: str
    shape: tuple[int, ...]
    values: tuple[float | int, ...]


def safetensors_bytes(
    tensors: Mapping[str, tuple[str, Sequence[int], Sequence[float | int]]],
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Serialise ``{name: (dtype, shape, flat values)}`` as safetensors: an 8-byte
    little-endian header length, a JSON header padded with spaces to 8 bytes, then the
    little-endian tensor data in the order given."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    chunks: list[bytes] = []
    offset = 0
    for name, (dtype, shape, values) in tensors.items():
        count = 1
        for d in shape:
            count *= d
        assert len(values) == count, f"{name}: {len(values)} values for shape {list(shape)}"
        chunk = struct.pack(f"<{count}{_FORMATS[dtype]}", *values)
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(chunk)],
        }
        chunks.append(chunk)
        offset += len(chunk)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def read_safetensors(data: bytes) -> dict[str, Tensor]:
    """The tensors of safetensors bytes (the ``__metadata__`` entry left out)."""
    data = bytes(data)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        fmt = _FORMATS[t["dtype"]]
        count = (end - begin) // struct.calcsize(fmt)
        values = struct.unpack(f"<{count}{fmt}", body[begin:end])
        out[name] = Tensor(t["dtype"], tuple(t["shape"]), values)
    return out


def raw_sqlite_bytes(db_path: Path) -> bytes:
    """Every byte a SQLite database keeps on disk: the main file, its WAL and its journal
    (what a deletion test scans for a marker)."""
    data = db_path.read_bytes()
    for suffix in ("-wal", "-journal"):
        extra = db_path.with_name(db_path.name + suffix)
        if extra.exists():
            data += extra.read_bytes()
    return data


def sent_sql(mm: Any, fn: Callable[[], Any]) -> list[str]:
    """Every SQL statement ``mm`` sends while ``fn`` runs, including those run on the driver's
    own connection (SQLite's search and hot writes), which SQLAlchemy's events do not see."""
    from sqlalchemy import event

    engine, sent, traced = mm.database.engine, [], []

    def record(_conn, _cursor, statement, *_rest) -> None:  # type: ignore[no-untyped-def]
        sent.append(statement)

    def trace(dbapi_connection, _record, _proxy) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.set_trace_callback(sent.append)  # sqlite3 reports every statement
        traced.append(dbapi_connection)

    name, listener = (
        ("checkout", trace)
        if engine.dialect.name == "sqlite"
        else ("before_cursor_execute", record)
    )
    event.listen(engine, name, listener)
    try:
        fn()
    finally:
        event.remove(engine, name, listener)
        for c in traced:
            c.set_trace_callback(None)
    return sent
