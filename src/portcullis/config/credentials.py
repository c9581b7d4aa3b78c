"""The parent proxy's credentials file (`upstream_proxy.credentials`): one
`user:password` line, turned into the `Proxy-Authorization` value sent with
each CONNECT to the parent.

Read when the policy loads (a bad file refuses the policy, as any bad field
does) and again when the file changes, looked at once a second at most
(basics/filewatch.py), so a rotated secret takes effect without a reload. A
file that turns unreadable or bad keeps the last good value and says why in
`problem`: the parent, not Portcullis, judges whether those credentials still
work, and its refusal then carries the problem (proxy/parent.py).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path

from portcullis.basics.filewatch import FileWatch


def read_credentials(path: str) -> str:
    """The `Proxy-Authorization` value for a file holding one `user:password` line.

    ValueError names the file and the problem, never the secret.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read the credentials file {path}: {reason}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Checked after the strip: ` :x` would otherwise send an empty user name.
    if len(lines) != 1 or ":" not in lines[0] or lines[0].startswith(":"):
        raise ValueError(f"the credentials file {path} must hold one line 'user:password'")
    return "Basic " + base64.b64encode(lines[0].encode("utf-8")).decode("ascii")


class CredentialsFile:
    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic,
                 recheck: float = 1.0) -> None:
        self.path = path
        self._watch = FileWatch(path, clock, recheck)
        self._value = read_credentials(path)
        self.problem: str | None = None  # why the file's current content is not used

    def value(self) -> str:
        """The `Proxy-Authorization` value, read again if the file changed."""
        if self._watch.changed():
            try:
                self._value, self.problem = read_credentials(self.path), None
            except ValueError as exc:
                self.problem = f"{exc}; the last good credentials are sent"
        return self._value

    def __repr__(self) -> str:
        return f"CredentialsFile({self.path!r})"  # never the value
