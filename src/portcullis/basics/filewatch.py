"""Has a file changed? A stat at most once per `recheck` seconds, so a file the
proxy consults on every connection (the password file, the parent proxy's
credentials) follows edits without a reload and without a stat per connection.
A change is a different inode (a file replaced by rename, as editors and
Kubernetes Secret volumes do it), size or modification time; a file that
vanishes is a change too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _Stamp:
    inode: int
    size: int
    mtime_ns: int


class FileWatch:
    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic,
                 recheck: float = 1.0) -> None:
        self.path, self._clock, self._recheck = path, clock, recheck
        self._stamp = self._stat()
        self._checked = clock()

    def _stat(self) -> _Stamp | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return _Stamp(st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> bool:
        """True once for each change seen; False within `recheck` of the last look."""
        now = self._clock()
        if now - self._checked < self._recheck:
            return False
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True
