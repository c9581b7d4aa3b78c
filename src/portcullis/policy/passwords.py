"""The password file of `Proxy-Authorization: Basic` (docs/semantics.md §11).

One `user:hash` a line (`#` comments), hashes in bcrypt (`$2b$...`) or argon2
(`$argon2id$...`) form, as `portcullis passwd` writes them. Hashing is slow by
design, so a verified user:password is remembered (`VerifiedCache`) under a key
that holds the user's stored hash: a changed password in the file, or another
password sent, misses the cache and is hashed again. No secret is ever kept:
the cache holds a keyed digest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping

import argon2
import bcrypt

from portcullis.basics import memo
from portcullis.basics.errors import PasswordFileError
from portcullis.basics.filewatch import FileWatch

_BCRYPT = ("$2a$", "$2b$", "$2y$")
_ARGON2 = ("$argon2id$", "$argon2i$", "$argon2d$")
_argon2 = argon2.PasswordHasher()
SCHEMES = ("argon2", "bcrypt")


def check_user(user: str) -> str:
    """A user name the file and the Basic scheme can both carry."""
    if not user or len(user) > 253 or ":" in user or not all("!" <= c <= "~" for c in user):
        raise PasswordFileError(
            f"{user!r} is not a user name: 1 to 253 printable ASCII characters, no ':' or spaces")
    return user


def parse(text: str, source: str) -> dict[str, str]:
    """user -> hash; PasswordFileError naming the line of the first problem."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        where = f"{source}:{number}"
        if not sep:
            raise PasswordFileError(f"{where}: expected user:hash")
        try:
            check_user(user)
        except PasswordFileError as exc:
            raise PasswordFileError(f"{where}: {exc}") from None
        if not stored.startswith(_BCRYPT + _ARGON2):
            raise PasswordFileError(f"{where}: the hash of {user!r} is neither bcrypt ($2b$)"
                                    " nor argon2 ($argon2id$); write it with `portcullis passwd`")
        if user in entries:
            raise PasswordFileError(f"{where}: {user!r} appears twice")
        entries[user] = stored
    return entries


def read(path: str) -> str:
    """The password file's text; PasswordFileError when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PasswordFileError(f"cannot read the password file {path}: {exc}") from None


def load(path: str) -> dict[str, str]:
    return parse(read(path), path)


def hash_password(password: str, scheme: str = "argon2", *, cost: int = 12) -> str:
    """A new hash of `password`; `cost` is bcrypt's work factor (argon2 keeps its defaults)."""
    if scheme == "bcrypt":
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode("ascii")
    return _argon2.hash(password)


def verify(stored: str, password: str) -> bool:
    """Whether `password` matches the stored hash: slow (that is the point)."""
    if stored.startswith(_BCRYPT):
        try:
            return bcrypt.checkpw(password.encode(), stored.encode("ascii"))
        except ValueError:  # a hash the file check let through but bcrypt cannot read
            return False
    try:
        return _argon2.verify(stored, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


class VerifiedCache:
    """user:password pairs verified within `ttl` seconds, keyed by a digest under a
    key of this process, together with the stored hash they were verified against."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 4096) -> None:
        self._ttl, self._clock, self._max = ttl, clock, max_entries
        self._key = secrets.token_bytes(32)
        self._until: dict[bytes, float] = {}

    def key(self, user: str, stored: str, password: str) -> bytes:
        """The login's digest: what the cache (and a check in flight) is keyed by."""
        message = b"\0".join((user.encode(), stored.encode(), password.encode()))
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def hit(self, user: str, stored: str, password: str) -> bool:
        return self.hit_key(self.key(user, stored, password))

    def hit_key(self, key: bytes) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until < self._clock():
            del self._until[key]
            return False
        return True

    def remember(self, key: bytes) -> None:
        if self._ttl <= 0:
            return
        memo.remember(self._until, key, self._clock() + self._ttl, self._max)


class PasswordFile:
    """The file's entries, read again when it changes (looked at once a second at most).

    A file that turns unreadable or bad leaves no entries at all (every Basic
    login fails until it is fixed) and `problem` says why: failing closed, since
    the edit that broke it may have been the removal of a user.
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic,
                 recheck: float = 1.0) -> None:
        self.path = path
        self._watch = FileWatch(path, clock, recheck)
        self.entries: Mapping[str, str] = load(path)  # at start: a bad file is a ConfigError
        self.problem: str | None = None

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when it was re-read."""
        if not self._watch.changed():
            return False
        try:
            self.entries, self.problem = load(self.path), None
        except PasswordFileError as exc:
            self.entries, self.problem = {}, str(exc)
        return True
