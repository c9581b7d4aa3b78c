"""Writing the password file that `auth.passwords` names (docs/semantics.md §11).

Lines other than the user's are kept as they are (comments included); the
file is replaced in one rename and made readable by its owner only, so the
proxy, which reads it again when it changes, never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from portcullis.basics.errors import PasswordFileError
from portcullis.policy import passwords


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = passwords.read(str(path))
    passwords.parse(text, str(path))  # refuse to rewrite a file we cannot read
    return text.splitlines()


def _user_of(line: str) -> str | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    return text.partition(":")[0]


def _write(path: Path, lines: list[str]) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise PasswordFileError(f"cannot write next to {path}: {exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise PasswordFileError(f"cannot write {path}: {exc}") from None


def set_password(path: Path, user: str, password: str, *, scheme: str = "argon2",
                 cost: int = 12) -> bool:
    """Add `user` or change its password; True when it was added."""
    passwords.check_user(user)
    if not password:
        raise PasswordFileError("an empty password is refused")
    lines = _lines(path)
    entry = f"{user}:{passwords.hash_password(password, scheme, cost=cost)}"
    for index, line in enumerate(lines):
        if _user_of(line) == user:
            lines[index] = entry
            _write(path, lines)
            return False
    _write(path, [*lines, entry])
    return True


def delete_user(path: Path, user: str) -> None:
    lines = _lines(path)
    kept = [line for line in lines if _user_of(line) != user]
    if len(kept) == len(lines):
        raise PasswordFileError(f"no user {user!r} in {path}")
    _write(path, kept)
