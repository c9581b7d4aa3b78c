"""The password file (policy/passwords.py), `portcullis passwd` (tools/passwd.py)
and the Basic credentials parser (wire/proxy_auth.py)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from portcullis.basics.errors import AuthError, PasswordFileError
from portcullis.basics.vocabulary import Reason
from portcullis.policy import passwords
from portcullis.tools.passwd import delete_user, set_password
from portcullis.wire.proxy_auth import parse_proxy_authorization


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("scheme", ["argon2", "bcrypt"])
def test_a_hash_verifies_its_password_only(scheme: str) -> None:
    stored = passwords.hash_password("s3cret", scheme, cost=4)
    assert stored.startswith("$argon2id$" if scheme == "argon2" else "$2b$04$")
    assert passwords.verify(stored, "s3cret")
    assert not passwords.verify(stored, "s3cret ")
    assert not passwords.verify(stored, "")


@pytest.mark.parametrize(("text", "problem"), [
    ("alice", "f:1: expected user:hash"),
    ("alice:plain", "f:1: the hash of 'alice' is neither bcrypt"),
    ("# c\n\nal ice:$2b$04$x", "f:3: 'al ice' is not a user name"),
    ("a:$2b$04$x\na:$argon2id$y", "f:2: 'a' appears twice"),
])
def test_a_bad_file_names_the_line(text: str, problem: str) -> None:
    with pytest.raises(PasswordFileError, match="^" + problem.replace("$", r"\$")):
        passwords.parse(text, "f")


def test_the_cache_needs_the_same_user_hash_and_password_and_expires() -> None:
    clock = Clock()
    cache = passwords.VerifiedCache(ttl=10, clock=clock)
    cache.remember(cache.key("u", "$2b$old", "pw"))
    assert cache.hit("u", "$2b$old", "pw")
    assert not cache.hit("u", "$2b$old", "other")
    assert not cache.hit("u", "$2b$new", "pw")  # the file changed the user's hash
    assert not cache.hit("v", "$2b$old", "pw")
    clock.now = 11
    assert not cache.hit("u", "$2b$old", "pw")
    assert b"pw" not in b"".join(cache._until)  # digests, never the secret


def test_the_file_is_read_again_when_it_changes_and_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    set_password(path, "alice", "one", scheme="bcrypt", cost=4)
    clock = Clock()
    file = passwords.PasswordFile(str(path), clock)
    first = file.entries["alice"]
    set_password(path, "alice", "two", scheme="bcrypt", cost=4)
    assert not file.refresh()  # looked at once a second at most
    clock.now = 1.5
    assert file.refresh() and file.entries["alice"] != first
    path.write_text("alice:not-a-hash\n")
    clock.now = 3
    assert file.refresh()
    assert file.entries == {} and "neither bcrypt" in (file.problem or "")


def test_passwd_keeps_other_lines_and_writes_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("# the CI runners\n")
    assert set_password(path, "alice", "one", cost=4)
    assert set_password(path, "bob", "two", scheme="bcrypt", cost=4)
    assert not set_password(path, "alice", "three", cost=4)
    lines = path.read_text().splitlines()
    assert lines[0] == "# the CI runners" and [x.split(":")[0] for x in lines[1:]] == [
        "alice", "bob"]
    assert passwords.verify(passwords.load(str(path))["alice"], "three")
    assert path.stat().st_mode & 0o777 == 0o600
    delete_user(path, "bob")
    assert list(passwords.load(str(path))) == ["alice"]
    with pytest.raises(PasswordFileError, match="no user 'bob'"):
        delete_user(path, "bob")
    with pytest.raises(PasswordFileError, match="empty password"):
        set_password(path, "carol", "")


def test_the_passwd_command_exits_2_with_a_message_on_bad_input(tmp_path: Path) -> None:
    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "portcullis.cli", "passwd", *args],
                              input=stdin, capture_output=True, text=True, check=False)

    path = tmp_path / "passwd"
    done = run(str(path), "alice", "--password-stdin", "--cost", "4", "--scheme", "bcrypt",
               stdin="pw\n")
    assert (done.returncode, done.stdout) == (0, f"added alice to {path} (bcrypt)\n")
    done = run(str(path), "a:b", "--password-stdin", stdin="pw\n")
    assert done.returncode == 2 and "'a:b' is not a user name" in done.stderr
    path.write_text("garbage\n")
    done = run(str(path), "alice", "--password-stdin", stdin="pw\n")
    assert done.returncode == 2 and f"{path}:1: expected user:hash" in done.stderr
    assert path.read_text() == "garbage\n"  # a file it cannot read is never rewritten


def basic(text: str) -> tuple[str, ...]:
    return (f"Basic {base64.b64encode(text.encode()).decode()}",)


def test_basic_credentials_are_parsed() -> None:
    assert parse_proxy_authorization(()) is None
    creds = parse_proxy_authorization(basic("runner-1:pa:ss wörd"))
    assert creds is not None and (creds.user, creds.password) == ("runner-1", "pa:ss wörd")
    assert "pa:ss" not in repr(creds)
    lower = parse_proxy_authorization(("basic " + basic("u:p")[0].split()[1],))
    assert lower is not None and lower.user == "u"


@pytest.mark.parametrize(("values", "problem"), [
    (("Bearer abc",), "this proxy takes Basic"),
    (("Basic !!!",), "base64"),
    (basic("no-colon"), "user:password"),
    (basic(":nouser"), "user:password"),
    (basic("us er:x"), "printable ASCII"),
    (basic("u:p") * 2, "2 Proxy-Authorization fields"),
    (("Basic " + "A" * 2000,), "over 1024"),
])
def test_bad_basic_credentials_are_407(values: tuple[str, ...], problem: str) -> None:
    with pytest.raises(AuthError, match=problem) as caught:
        parse_proxy_authorization(values)
    assert (caught.value.status, caught.value.reason) == (407, Reason.AUTH_FAILED)


def test_validate_reads_the_password_file(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    set_password(path, "alice", "pw", scheme="bcrypt", cost=4)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""\
version: 1
auth: {{passwords: {path}}}
identities: {{ci: {{names: [alice]}}}}
rules: [{{name: r, from: [ci], to: [us.icr.io]}}]
""")

    def validate() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "portcullis.cli", "validate", "-c",
                               str(policy)], capture_output=True, text=True, check=False)

    done = validate()
    assert done.returncode == 0 and "1 identity groups, 1 users, 0 quotas" in done.stdout
    with path.open("a") as f:
        f.write("junk\n")
    done = validate()
    assert done.returncode == 2 and f"{path}:2: expected user:hash" in done.stderr
