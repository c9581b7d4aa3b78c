"""Request heads, CONNECT authorities and proxy-request checks, table by table."""

from __future__ import annotations

import pytest

from portcullis.basics.errors import BadRequest, HeaderTooLarge, HttpError, NotImplementedMethod
from portcullis.basics.vocabulary import Reason
from portcullis.wire.http1 import (
    MAX_HEADERS,
    Authority,
    RequestHead,
    check_request,
    parse_absolute_uri,
    parse_connect_target,
    parse_request_head,
)


def head(data: bytes | bytearray) -> RequestHead:
    parsed = parse_request_head(data)
    assert parsed is not None
    return parsed


def test_error_tree_carries_status_and_reason() -> None:
    assert (BadRequest.status, BadRequest.reason) == (400, Reason.BAD_REQUEST)
    assert (HeaderTooLarge.status, HeaderTooLarge.reason) == (431, Reason.HEADER_TOO_LARGE)
    assert NotImplementedMethod.status == 501
    for cls in (BadRequest, HeaderTooLarge, NotImplementedMethod):
        assert issubclass(cls, HttpError) and issubclass(cls, ValueError)
    assert BadRequest("why").message == "why"


# --- parse_request_head: good heads ---------------------------------------


def test_connect_head() -> None:
    data = b"CONNECT us.icr.io:443 HTTP/1.1\r\nHost: us.icr.io:443\r\nUser-Agent: skopeo\r\n\r\n"
    parsed = head(data + b"\x16\x03\x01")
    assert parsed == RequestHead(
        method="CONNECT",
        target="us.icr.io:443",
        version="HTTP/1.1",
        headers=(("host", "us.icr.io:443"), ("user-agent", "skopeo")),
        head_length=len(data),
    )
    assert check_request(parsed) == Authority("us.icr.io", 443, False)


def test_headers_lowercased_stripped_and_repeats_kept() -> None:
    parsed = head(b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX-A:  one \t\r\nx-a:two\r\nEmpty:\r\n\r\n")
    assert parsed.headers == (("host", "a"), ("x-a", "one"), ("x-a", "two"), ("empty", ""))
    assert parsed.get("X-A") == "one"
    assert parsed.get_all("x-a") == ("one", "two")
    assert parsed.get("missing") is None and parsed.get_all("missing") == ()


def test_obs_text_in_values_is_kept_as_latin1() -> None:
    parsed = head(b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: caf\xe9\r\n\r\n")
    assert parsed.get("x") == "caf\xe9"


def test_keep_alive_heads_back_to_back() -> None:
    first = b"GET http://a/1 HTTP/1.1\r\nHost: a\r\n\r\n"
    second = b"\r\nHEAD http://a/2 HTTP/1.1\r\nHost: a\r\n\r\n"  # a stray CRLF before it
    stream = first + second
    one = head(stream)
    assert (one.target, one.head_length) == ("http://a/1", len(first))
    two = head(stream[one.head_length :])
    assert (two.method, two.target, two.head_length) == ("HEAD", "http://a/2", len(second))


def test_http10_without_host_and_bytearray_input() -> None:
    parsed = head(bytearray(b"GET http://a:8080/x HTTP/1.0\r\n\r\n"))
    assert parsed.version == "HTTP/1.0" and parsed.headers == ()
    assert check_request(parsed) == Authority("a", 8080, False)


@pytest.mark.parametrize(
    "partial",
    [b"", b"G", b"GET http://a/ HTTP/1.1", b"GET http://a/ HTTP/1.1\r\nHost: a\r\n", b"\r\n"],
)
def test_incomplete_head_needs_more(partial: bytes) -> None:
    assert parse_request_head(partial) is None


# --- parse_request_head: refusals -----------------------------------------

BAD_HEADS: dict[str, tuple[bytes, str]] = {
    "bare LF everywhere": (b"GET http://a/ HTTP/1.1\nHost: a\n\n", "bare LF"),
    "bare LF in one line": (b"GET http://a/ HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", "bare LF"),
    "lone CR": (b"GET http://a/ HTTP/1.1\r\nX: a\rb\r\n\r\n", "CR not followed"),
    "lone CR in request line": (b"GET http://a/\r HTTP/1.1\r\n\r\n", "CR not followed"),
    "CR before the final CRLF": (b"GET http://a/ HTTP/1.1\r\nX: a\r\r\n\r\n", "CR not followed"),
    "obs-fold": (b"GET http://a/ HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "folding"),
    "obs-fold with tab": (b"GET http://a/ HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", "folding"),
    "NUL in value": (b"GET http://a/ HTTP/1.1\r\nX: a\x00b\r\n\r\n", "0x00"),
    "DEL in value": (b"GET http://a/ HTTP/1.1\r\nX: a\x7f\r\n\r\n", "0x7f"),
    "escape in request line": (b"GET http://a/\x1b HTTP/1.1\r\n\r\n", "0x1b"),
    "TLS to the HTTP port": (b"\x16\x03\x01\x02\x00\x01", "0x16"),
    "double space": (b"GET  http://a/ HTTP/1.1\r\n\r\n", "request line"),
    "missing version": (b"GET http://a/\r\n\r\n", "request line"),
    "extra field": (b"GET http://a/ HTTP/1.1 x\r\n\r\n", "request line"),
    "tab separator": (b"GET\thttp://a/ HTTP/1.1\r\n\r\n", "request line"),
    "bad method char": (b"GE(T http://a/ HTTP/1.1\r\n\r\n", "invalid method"),
    "non-ascii target": (b"GET http://b\xc3\xbccher/ HTTP/1.1\r\n\r\n", "printable ASCII"),
    "HTTP/2.0": (b"GET http://a/ HTTP/2.0\r\n\r\n", "version"),
    "HTTP/1.2": (b"GET http://a/ HTTP/1.2\r\n\r\n", "version"),
    "lowercase version": (b"GET http://a/ http/1.1\r\n\r\n", "version"),
    "HTTP/0.9 style": (b"GET /\r\n\r\n", "request line"),
    "space in header name": (b"GET http://a/ HTTP/1.1\r\nX Y: 1\r\n\r\n", "invalid header name"),
    "@ in header name": (b"GET http://a/ HTTP/1.1\r\nX@: 1\r\n\r\n", "invalid header name"),
    "empty header name": (b"GET http://a/ HTTP/1.1\r\n: 1\r\n\r\n", "without a name"),
    "no colon": (b"GET http://a/ HTTP/1.1\r\nNoColon\r\n\r\n", "without a name"),
    "space before colon": (b"GET http://a/ HTTP/1.1\r\nHost : a\r\n\r\n", "whitespace between"),
    "tab before colon": (b"GET http://a/ HTTP/1.1\r\nHost\t: a\r\n\r\n", "whitespace between"),
    "too many headers": (
        b"GET http://a/ HTTP/1.1\r\n" + b"X: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n",
        "the limit is 100",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADS))
def test_bad_heads(case: str) -> None:
    data, message = BAD_HEADS[case]
    with pytest.raises(BadRequest, match=message):
        parse_request_head(data)


@pytest.mark.parametrize(
    "case",
    [
        "bare LF everywhere",
        "TLS to the HTTP port",
        "escape in request line",
        "lone CR in request line",
        "double space",
        "HTTP/2.0",
    ],
)
def test_bad_bytes_refused_before_the_head_is_complete(case: str) -> None:
    data = BAD_HEADS[case][0]
    # Everything but the blank line that would complete the head.
    cut = data.find(b"\n\n") if b"\n\n" in data else data.rfind(b"\r\n\r\n") + 2
    assert 0 < cut < len(data) - 1 or case == "TLS to the HTTP port"
    with pytest.raises(BadRequest, match=BAD_HEADS[case][1]):
        parse_request_head(data[: max(cut, 3)])


def test_head_ended_by_bare_lfs_is_refused_not_awaited() -> None:
    # No CRLFCRLF will ever come; waiting would hold the connection to the limit.
    with pytest.raises(BadRequest, match="bare LF"):
        parse_request_head(b"GET http://a/ HTTP/1.1\r\nHost: a\n\n")


def test_exactly_max_headers_is_fine() -> None:
    parsed = head(b"GET http://a/ HTTP/1.1\r\n" + b"X: 1\r\n" * MAX_HEADERS + b"\r\n")
    assert len(parsed.headers) == MAX_HEADERS


@pytest.mark.parametrize("method", [b"BREW", b"get", b"PROPFIND"])
def test_unknown_method_is_501(method: bytes) -> None:
    with pytest.raises(NotImplementedMethod) as info:
        parse_request_head(method + b" http://a/ HTTP/1.1\r\n\r\n")
    assert info.value.status == 501


def test_head_too_large() -> None:
    start = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n"
    assert parse_request_head(start, max_size=64) is None
    with pytest.raises(HeaderTooLarge) as info:
        parse_request_head(start + b"X: " + b"a" * 64, max_size=64)
    assert info.value.status == 431
    # The end arrives, but beyond the limit: still too large.
    with pytest.raises(HeaderTooLarge):
        parse_request_head(start + b"X: " + b"a" * 40 + b"\r\n\r\n", max_size=64)
    complete = start + b"\r\n"
    assert head(complete).head_length == len(complete)
    assert parse_request_head(complete, max_size=len(complete)) is not None
    with pytest.raises(HeaderTooLarge):
        parse_request_head(complete, max_size=len(complete) - 1)


# --- parse_connect_target --------------------------------------------------

GOOD_TARGETS = {
    "us.icr.io:443": Authority("us.icr.io", 443, False),
    "US.ICR.IO:443": Authority("us.icr.io", 443, False),
    "us.icr.io.:443": Authority("us.icr.io", 443, False),
    "bücher.example:443": Authority("xn--bcher-kva.example", 443, False),
    "xn--bcher-kva.example:8443": Authority("xn--bcher-kva.example", 8443, False),
    "[::1]:443": Authority("::1", 443, True),
    "[2001:DB8:0::1]:1": Authority("2001:db8::1", 1, True),
    "10.0.0.1:65535": Authority("10.0.0.1", 65535, True),
    "_svc.example.com:443": Authority("_svc.example.com", 443, False),
}


@pytest.mark.parametrize("target", sorted(GOOD_TARGETS))
def test_connect_targets(target: str) -> None:
    assert parse_connect_target(target) == GOOD_TARGETS[target]


BAD_TARGETS = {
    "us.icr.io": "CONNECT needs host:port",
    "us.icr.io:": "CONNECT needs host:port",
    "[::1]": "CONNECT needs host:port",
    "[::1]:": "CONNECT needs host:port",
    "us.icr.io:0": "out of range",
    "us.icr.io:65536": "out of range",
    "us.icr.io:+443": "not a number",
    "us.icr.io:-1": "not a number",
    "us.icr.io:https": "not a number",
    "us.icr.io:443443": "not a number",
    "us.icr.io:٤٤٣": "not a number",  # Arabic-Indic digits pass str.isdigit
    "user@us.icr.io:443": "userinfo",
    "user:pw@us.icr.io:443": "userinfo",
    "us%2eicr.io:443": "percent-encoded",
    "[fe80::1%25eth0]:443": "percent-encoded",
    ":443": "empty host",
    "": "empty",
    "::1:443": "brackets",
    "[::1:443": "unclosed",
    "[example.com]:443": "IPv6 address",
    "[::1]x:443": "not ':port'",
    "a..b:443": "empty label",
    "-a.example:443": "invalid label",
    "a b.example:443": "invalid label",
    "a/b.example:443": "not a URL",
    "a*b.example:443": "invalid label",
    ("x" * 64) + ".example:443": "label of 64",
    "127.1:443": "looks numeric",
    "0x7f000001:443": "looks numeric",
    "0x7f.1:443": "looks numeric",
    "a.0X1:443": "looks numeric",
    "1.2.3.4.5:443": "looks numeric",
    "010.0.0.1:443": "looks numeric",
    "example.123:443": "looks numeric",
}


@pytest.mark.parametrize("target", sorted(BAD_TARGETS))
def test_bad_connect_targets(target: str) -> None:
    with pytest.raises(BadRequest, match=BAD_TARGETS[target]):
        parse_connect_target(target)


# --- parse_absolute_uri ----------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "authority", "path"),
    [
        ("http://example.com", Authority("example.com", 80, False), "/"),
        ("http://example.com/v2/", Authority("example.com", 80, False), "/v2/"),
        ("http://example.com?x=1", Authority("example.com", 80, False), "/?x=1"),
        ("http://example.com?next=/v2/", Authority("example.com", 80, False), "/?next=/v2/"),
        ("HTTP://Example.COM:8080/a?b=/c", Authority("example.com", 8080, False), "/a?b=/c"),
        ("http://example.com:/x", Authority("example.com", 80, False), "/x"),
        ("http://[::1]:5000/v2/", Authority("::1", 5000, True), "/v2/"),
        ("http://a.example/%41?q=%20", Authority("a.example", 80, False), "/%41?q=%20"),
    ],
)
def test_absolute_uris(uri: str, authority: Authority, path: str) -> None:
    assert parse_absolute_uri(uri) == ("http", authority, path)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("https://us.icr.io/v2/", "CONNECT"),
        ("ftp://a/", "unsupported scheme"),
        ("/v2/", "not absolute-form"),
        ("us.icr.io:443", "not absolute-form"),
        ("http:///path", "empty"),
        ("http://user@a/", "userinfo"),
        ("http://a%2e/", "percent-encoded"),
        ("http://a/#frag", "fragment"),
        ("http://a:99999/", "out of range"),
        ("http://127.1/", "looks numeric"),
    ],
)
def test_bad_absolute_uris(uri: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_absolute_uri(uri)


# --- check_request -----------------------------------------------------------


def request(target: str, *headers: str, version: str = "HTTP/1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {target} {version}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (request("http://example.com/", "Host: example.com"), Authority("example.com", 80, False)),
        (request("http://example.com/", "Host: EXAMPLE.com.:80"), ("example.com", 80)),
        (request("http://example.com:8080/", "Host: example.com:8080"), ("example.com", 8080)),
        (request("http://[::1]/", "Host: [0::1]"), ("::1", 80)),
        (request("http://a/", "Host: a", "Content-Length: 12"), ("a", 80)),
        (request("http://a/", "Host: a", "Transfer-Encoding: Chunked"), ("a", 80)),
        (request("us.icr.io:443", "Content-Length: 0", method="CONNECT"), ("us.icr.io", 443)),
        (request("us.icr.io:443", method="CONNECT", version="HTTP/1.0"), ("us.icr.io", 443)),
    ],
)
def test_good_proxy_requests(data: bytes, expected: Authority | tuple[str, int]) -> None:
    authority = check_request(head(data))
    if isinstance(expected, Authority):
        assert authority == expected
    else:
        assert (authority.host, authority.port) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (request("/v2/", "Host: a"), "origin-form"),
        (request("*", "Host: a", method="OPTIONS"), "origin-form"),
        (request("https://a/", "Host: a"), "CONNECT"),
        (request("http://a/"), "needs a Host"),
        (request("http://a/", "Host: a", "Host: a"), "2 Host headers"),
        (request("http://a/", "Host: b"), "disagrees"),
        (request("http://a/", "Host: a:8080"), "disagrees"),
        (request("http://a:8080/", "Host: a"), "disagrees"),
        (request("http://a/", "Host: "), "empty"),
        (request("http://a/", "Host: u@a"), "userinfo"),
        (
            request("http://a/", "Host: a", "Content-Length: 1", "Transfer-Encoding: chunked"),
            "both",
        ),
        (
            request("http://a/", "Host: a", "Content-Length: 3", "Content-Length: 3"),
            "Content-Length",
        ),
        (request("http://a/", "Host: a", "Content-Length: 3, 3"), "not a decimal"),
        (request("http://a/", "Host: a", "Content-Length: -1"), "not a decimal"),
        (request("http://a/", "Host: a", "Content-Length: 0x10"), "not a decimal"),
        (request("http://a/", "Host: a", "Content-Length: " + "9" * 19), "not a decimal"),
        (request("http://a/", "Host: a", "Transfer-Encoding: gzip, chunked"), "only 'chunked'"),
        (request("http://a/", "Host: a", "Transfer-Encoding: identity"), "only 'chunked'"),
        (
            request("http://a/", "Host: a", "Transfer-Encoding: chunked", "Transfer-Encoding: x"),
            "only 'chunked'",
        ),
        (request("http://a/", "Transfer-Encoding: chunked", version="HTTP/1.0"), "HTTP/1.0"),
        (request("us.icr.io", method="CONNECT"), "CONNECT needs host:port"),
        (request("http://us.icr.io:443", method="CONNECT"), "not a URL"),
        (request("us.icr.io:443", "Content-Length: 5", method="CONNECT"), "no body"),
        (request("us.icr.io:443", "Transfer-Encoding: chunked", method="CONNECT"), "no body"),
        (request("us.icr.io:443", "Host: a", "Host: b", method="CONNECT"), "2 Host headers"),
    ],
)
def test_bad_proxy_requests(data: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_request(head(data))
