"""Property tests of the plain-HTTP keep-alive loop (tests/support/keepalive_driver.py):
sequences of real request heads and bodies, cut, mutated and joined, give only
forwarded requests or a refusal, never an exception or a forwarded head whose
Host is not the name decided on."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.keepalive_driver import drive

HOSTS = ["a.example", "A.Example.", "b.example:8080", "[2001:db8::1]", "127.0.0.1:80"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "FROB", "get"]


@st.composite
def request(draw: st.DrawFn) -> bytes:
    host = draw(st.sampled_from(HOSTS))
    claimed = draw(st.sampled_from([host, host.upper(), "evil.example", "we\xadb.test"]))
    method = draw(st.sampled_from(METHODS))
    path = draw(st.text("ab/?", max_size=8))
    target = host if method == "CONNECT" else f"http://{host}/{path}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {claimed}"]
    body = b""
    framing = draw(st.sampled_from(["none", "length", "chunked", "both"]))
    if framing in ("length", "both"):
        body = draw(st.binary(max_size=16))
        lines.append(f"Content-Length: {len(body)}")
    if framing in ("chunked", "both"):
        lines.append("Transfer-Encoding: chunked")
        chunk = draw(st.binary(max_size=16))
        trailer = draw(st.sampled_from(["", "Host: evil\r\n", "X-Sum: 1\r\n",
                                        "Content-Length: 9\r\n"]))
        body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n"
                + trailer.encode() + b"\r\n") if chunk else b"0\r\n" + trailer.encode() + b"\r\n"
    lines.extend(draw(st.lists(st.sampled_from(
        ["Connection: keep-alive", "X: a\r\n b", "Te: trailers", "X-Ctl: a\x01b"]), max_size=2)))
    head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
    return head + body


@settings(max_examples=300, deadline=None)
@given(st.lists(request(), min_size=1, max_size=4), st.integers(min_value=0, max_value=400))
def test_sequences_of_requests_are_forwarded_or_refused(parts: list[bytes], cut: int) -> None:
    stream = b"".join(parts)
    drive(stream)
    drive(stream[:cut])  # every prefix: need more, forwarded, or refused


@settings(max_examples=300, deadline=None)
@given(st.lists(request(), min_size=1, max_size=3), st.binary(max_size=64),
       st.integers(min_value=0, max_value=300))
def test_junk_spliced_into_a_stream_is_never_a_crash(parts: list[bytes], junk: bytes,
                                                     at: int) -> None:
    stream = b"".join(parts)
    at = min(at, len(stream))
    drive(stream[:at] + junk + stream[at:])


def test_the_driver_can_fail() -> None:
    # A pipelined CONNECT is refused, not decided; three GETs are forwarded.
    get = b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n"
    assert drive(get * 3).forwarded == 3
    connect = b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n"
    refused = drive(get + connect)
    assert (refused.forwarded, refused.refused) == (1, "400 bad_request")
