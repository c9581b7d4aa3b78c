"""The parent proxy's credentials file (config/credentials.py) follows edits
without a reload: a stat at most once a second (basics/filewatch.py), the last
good value kept while the file is bad, and the problem said; the same watch
serves the password file."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from portcullis.basics.filewatch import FileWatch
from portcullis.config.credentials import CredentialsFile, read_credentials


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def basic(line: str) -> str:
    return "Basic " + base64.b64encode(line.encode()).decode()


def test_a_change_is_seen_after_the_recheck_interval_only(tmp_path: Path) -> None:
    path = tmp_path / "cred"
    path.write_text("alice:one\n")
    clock = Clock()
    creds = CredentialsFile(str(path), clock)
    assert creds.value() == basic("alice:one")
    path.write_text("alice:two-longer\n")
    clock.now += 0.5
    assert creds.value() == basic("alice:one")  # not looked at yet
    clock.now += 0.6
    assert creds.value() == basic("alice:two-longer") and creds.problem is None


def test_a_file_replaced_by_rename_is_read_again(tmp_path: Path) -> None:
    """Kubernetes Secret volumes and editors replace the file: a new inode, maybe
    the same size and second."""
    path = tmp_path / "cred"
    path.write_text("alice:aaaa\n")
    clock = Clock()
    creds = CredentialsFile(str(path), clock)
    stat = path.stat()
    new = tmp_path / "cred.new"
    new.write_text("alice:bbbb\n")
    os.utime(new, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(new, path)
    clock.now += 1.0
    assert creds.value() == basic("alice:bbbb")


@pytest.mark.parametrize("bad", ["", "no-colon\n", ":no-user\n", " :x\n", "a:b\nc:d\n",
                                 b"\xff:x\n"])
def test_a_bad_edit_keeps_the_last_good_value_and_says_why(tmp_path: Path,
                                                           bad: str | bytes) -> None:
    path = tmp_path / "cred"
    path.write_text("alice:good\n")
    clock = Clock()
    creds = CredentialsFile(str(path), clock)
    if isinstance(bad, bytes):
        path.write_bytes(bad)
    else:
        path.write_text(bad)
    clock.now += 1.0
    assert creds.value() == basic("alice:good")
    assert creds.problem is not None and str(path) in creds.problem
    assert "last good" in creds.problem and "good\n" not in creds.problem
    path.write_text("alice:fixed\n")
    clock.now += 1.0
    assert creds.value() == basic("alice:fixed") and creds.problem is None


def test_a_vanished_file_keeps_the_last_good_value(tmp_path: Path) -> None:
    path = tmp_path / "cred"
    path.write_text("alice:good\n")
    clock = Clock()
    creds = CredentialsFile(str(path), clock)
    path.unlink()
    clock.now += 1.0
    assert creds.value() == basic("alice:good")
    assert creds.problem is not None and "cannot read" in creds.problem
    assert "good" not in repr(creds)


def test_a_leading_space_cannot_make_an_empty_user(tmp_path: Path) -> None:
    """Found by tests/fuzz/atheris_proxy_auth.py: ` :x` was sent as user ''."""
    path = tmp_path / "cred"
    path.write_text(" :secret\n")
    with pytest.raises(ValueError, match="must hold one line"):
        read_credentials(str(path))
    path.write_text("  bob:pw  \n")
    assert read_credentials(str(path)) == basic("bob:pw")


def test_the_watch_stats_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("1")
    clock = Clock()
    watch = FileWatch(str(path), clock, recheck=1.0)
    path.write_text("22")
    assert not watch.changed()
    clock.now += 1.0
    assert watch.changed() and not watch.changed()  # once per change
    clock.now += 1.0
    assert not watch.changed()
    path.unlink()
    clock.now += 1.0
    assert watch.changed()
