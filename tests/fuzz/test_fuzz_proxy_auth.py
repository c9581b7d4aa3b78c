"""Property test of the Proxy-Authorization parser (wire/proxy_auth.py): any
field values give credentials, None, or an AuthError answered 407, and a
well-formed login always comes back as it was sent."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from portcullis.basics.errors import AuthError
from portcullis.wire.proxy_auth import parse_proxy_authorization

_USER = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                              blacklist_characters=":"), min_size=1, max_size=40)


@given(st.lists(st.text(max_size=200), max_size=3))
def test_any_values_are_credentials_none_or_a_407(values: list[str]) -> None:
    try:
        credentials = parse_proxy_authorization(tuple(values))
    except AuthError as exc:
        assert exc.status == 407 and exc.message
        return
    assert (credentials is None) == (not values)


@given(_USER, st.text(max_size=100), st.sampled_from(["Basic", "basic", "BASIC"]))
def test_a_well_formed_login_round_trips(user: str, password: str, scheme: str) -> None:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    if len(token) > 1024:
        return
    credentials = parse_proxy_authorization((f"{scheme} {token}",))
    assert credentials is not None
    assert (credentials.user, credentials.password) == (user, password)
