"""JSON-lines log of decisions, closes and operational events.

One object per line: the decision and close lines, two per connection, are
formatted straight into a string (lines.py), the rarer operational ones built
as a dict and serialized with one encoder. The logging module's per-record
formatting is too slow for the hot path, and a line written with one write()
call is not interleaved with another process's line when several workers
append to the same file (O_APPEND).

Hosts and SNIs come from clients. ensure_ascii=True escapes every control
character, newline, ESC and non-ASCII code point, so no client-supplied string
can split a line, forge a second one or drive a terminal.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from portcullis.observe.audit import AuditEvent
from portcullis.observe.events import CloseEvent, DecisionEvent
from portcullis.observe.lines import MAX_STRING, cap, close_line, decision_line

# One encoder for every line: json.dumps() with options builds a new
# JSONEncoder on each call, a cost paid twice per connection.
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str).encode

__all__ = ["MAX_STRING", "DecisionLog"]

_RESERVED = frozenset({"event", "time", "ts", "msg", "truncated"})


class _Clock:
    """RFC 3339 UTC timestamps with milliseconds, the seconds part cached."""

    __slots__ = ("_prefix", "_sec")

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""

    def format(self, ts: float) -> str:
        ms_total = int(ts * 1000)
        sec, ms = divmod(ms_total, 1000)
        if sec != self._sec:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._sec = sec
        return f"{self._prefix}.{ms:03d}Z"


class DecisionLog:
    """Writes events as JSON lines to stdout, a stream, or a file path.

    `target` is None or "-" for stdout, a path (opened for append), or an open
    text stream (tests, embedding). Write errors never reach the proxy: the line
    is dropped and counted in `dropped`.
    """

    def __init__(self, target: str | os.PathLike[str] | IO[str] | None = None) -> None:
        self._clock = _Clock()
        self._lock = threading.Lock()
        self._path: str | None = None
        self._fd: int | None = None
        self._stream: IO[str] | None = None
        self.dropped = 0
        if target is None or target == "-":
            self._stream = sys.stdout
        elif isinstance(target, str | os.PathLike):
            self._path = os.fspath(target)
            self._fd = self._open(self._path)
        else:
            self._stream = target

    @staticmethod
    def _open(path: str) -> int:
        # A raw fd with O_APPEND: each line is one write(2) at the end of the
        # file, with no userspace buffer to flush or to split a long line.
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    @property
    def path(self) -> str | None:
        return self._path

    def reopen(self) -> None:
        """Reopen the file at the same path (after logrotate moved it).

        Cheap and exception-free enough to call from a SIGHUP handler; a
        failure keeps the old file and is reported as an error line into it.
        """
        if self._path is None:
            return
        try:
            new_fd = self._open(self._path)
        except OSError as exc:
            self.log_error("log reopen failed", path=self._path, error=str(exc))
            return
        with self._lock:
            old, self._fd = self._fd, new_fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _write(self, record: dict[str, Any]) -> None:
        try:
            line = _encode(record)
        except ValueError:  # a circular field
            self.dropped += 1
            return
        self._write_line(line + "\n")

    def _write_line(self, line: str) -> None:
        try:
            if self._stream is not None:
                self._stream.write(line)
                self._stream.flush()
                return
            data = line.encode("ascii")
            with self._lock:
                if self._fd is None:
                    self.dropped += 1
                    return
                os.write(self._fd, data)
        except (OSError, ValueError):
            # ValueError: a closed stream. A full disk or a closed stdout must
            # not take connections down with it.
            self.dropped += 1

    def _head(self, event: str, ts: float) -> dict[str, Any]:
        return {"event": event, "time": self._clock.format(ts), "ts": round(ts, 6)}

    def decision(self, ev: DecisionEvent) -> None:
        self._write_line(decision_line(ev, self._clock.format(ev.time)))

    def close_event(self, ev: CloseEvent) -> None:
        self._write_line(close_line(ev, self._clock.format(ev.time)))

    def audit(self, ev: AuditEvent) -> None:
        """One inspected request (observe/audit.py)."""
        self._write_fields(self._head("audit", ev.time), ev.fields(), [])

    def _operational(self, event: str, message: str, fields: dict[str, object]) -> None:
        cut: list[str] = []
        rec = self._head(event, time.time())
        rec["msg"] = cap(message, "msg", cut)
        self._write_fields(rec, fields, cut)

    def _write_fields(self, rec: dict[str, Any], fields: Mapping[str, object],
                      cut: list[str]) -> None:
        """Add `fields` to `rec` (long strings cut and listed in "truncated"), then write it."""
        for key, value in fields.items():
            # A field may not overwrite the envelope, which readers rely on.
            name = f"_{key}" if key in _RESERVED else key
            rec[name] = cap(value, name, cut) if isinstance(value, str) else value
        if cut:
            rec["truncated"] = cut
        self._write(rec)

    def log_info(self, message: str, **fields: object) -> None:
        self._operational("info", message, fields)

    def log_error(self, message: str, **fields: object) -> None:
        self._operational("error", message, fields)
