"""The pure parts of `portcullis check`: image references, challenges, proxies, hints."""

from __future__ import annotations

import pytest

from portcullis.tools.diagnose import allow_hint
from portcullis.tools.doctor import catalog_targets
from portcullis.tools.netprobe import parse_proxy
from portcullis.tools.pull_probe import ImageRef, parse_challenge, parse_image


@pytest.mark.parametrize(("text", "expected"), [
    ("us.icr.io/ns/app:1", ImageRef("us.icr.io", 443, "ns/app", "1")),
    ("us.icr.io/ns/app", ImageRef("us.icr.io", 443, "ns/app", "latest")),
    ("registry.local:5443/a/b/c:v2", ImageRef("registry.local", 5443, "a/b/c", "v2")),
    ("nginx", ImageRef("registry-1.docker.io", 443, "library/nginx", "latest")),
    ("user/app:3", ImageRef("registry-1.docker.io", 443, "user/app", "3")),
    ("localhost/x:1", ImageRef("localhost", 443, "x", "1")),
    ("us.icr.io/ns/app@sha256:" + "a" * 64,
     ImageRef("us.icr.io", 443, "ns/app", "sha256:" + "a" * 64)),
])
def test_parse_image(text: str, expected: ImageRef) -> None:
    assert parse_image(text) == expected


@pytest.mark.parametrize("text", ["us.icr.io/NS/app:1", "us.icr.io/ns/app@sha256:xyz",
                                  "us.icr.io:x/ns/app", "us.icr.io/"])
def test_parse_image_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_image(text)


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://us.icr.io/oauth/token",service="registry",scope="x:y:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://us.icr.io/oauth/token", "service": "registry",
                      "scope": "x:y:pull"}
    assert parse_challenge('Basic realm="r"') == ("basic", {"realm": "r"})
    assert parse_challenge("") == ("", {})


def test_parse_proxy() -> None:
    proxy = parse_proxy("http://alice:s%3Acret@proxy.corp:8080")
    assert (proxy.host, proxy.port, proxy.url) == ("proxy.corp", 8080, "http://proxy.corp:8080")
    assert proxy.authorization == "Basic YWxpY2U6czpjcmV0"  # alice:s:cret
    assert parse_proxy("10.0.0.1:3128").url == "http://10.0.0.1:3128"
    assert parse_proxy("http://p").port == 80
    assert parse_proxy("https://p").port == 443
    secure = parse_proxy("https://p")
    assert (secure.scheme, secure.port, secure.url) == ("https", 443, "https://p:443")
    assert parse_proxy("https://[::1]:8443").url == "https://[::1]:8443"
    for bad, message in (("socks5://p:1080", "write http://HOST:PORT or https://HOST:PORT"),
                         ("https://p:99999", "not a number from 1 to 65535"),
                         ("https://:443", "names no host; write https://HOST:PORT")):
        with pytest.raises(ValueError, match=message):
            parse_proxy(bad)


def test_allow_hint_offers_the_vendor_wildcard() -> None:
    assert allow_hint("dd0.icr.io") == "dd0.icr.io or *.icr.io"
    assert allow_hint("dd1-icr.ibm-zh.com") == "dd1-icr.ibm-zh.com or *.ibm-zh.com"
    assert allow_hint("registry.ng.bluemix.net") == "registry.ng.bluemix.net"


def test_catalog_targets_carry_roles_and_opt_ins() -> None:
    targets, patterns = catalog_targets("ibm", ["us-south"])
    roles = {t.name: t.roles for t in targets}
    assert roles["us.icr.io"] == ("api", "token")
    assert roles["dd0.icr.io"] == ("blob",)
    assert "private.us.icr.io" not in roles and patterns == []
    targets, _ = catalog_targets("ibm", ["us-south"], china=True, private=True)
    names = {t.name for t in targets}
    assert {"private.us.icr.io", "dd1-icr.ibm-zh.com"} <= names
