"""Who the client is: a client certificate's identity (the TLS listener) or a
`Proxy-Authorization: Basic` login checked against the password file
(docs/semantics.md §11).

Hashes are checked on worker threads, never on the event loop, and a verified
user:password is remembered (policy/passwords.py) so a pull's many CONNECTs
pay for one hash. Only the user name ever reaches a log line or an answer.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from portcullis.basics.errors import AuthError, Refusal
from portcullis.basics.vocabulary import Mode, Reason
from portcullis.config.access import Auth
from portcullis.policy import passwords
from portcullis.proxy.attempt import Attempt
from portcullis.wire.authority import Authority
from portcullis.wire.http1 import RequestHead
from portcullis.wire.proxy_auth import parse_proxy_authorization

# Logins waiting for a hash beyond this are refused (503): a flood of wrong
# passwords must not queue without bound behind two hashing threads.
MAX_PENDING = 256
# A login verified from the cache, or by running the hash (the metric's label).
Login = Literal["cached", "hashed"]


class Authenticator:
    """The password file and the cache of verified logins; kept across reloads
    while `auth:` stays the same."""

    def __init__(self, auth: Auth) -> None:
        self.auth = auth
        self.passwords = passwords.PasswordFile(auth.passwords) if auth.passwords else None
        self.cache = passwords.VerifiedCache(auth.cache_seconds)
        self._executor: ThreadPoolExecutor | None = None
        # Checks running, by login digest: the CONNECTs a client opens at once
        # with the same login wait for one hash instead of each running its own.
        self._running: dict[bytes, asyncio.Future[bool]] = {}

    async def verify(self, user: str, password: str) -> Login:
        """How `user` was verified (its password was right); AuthError otherwise."""
        assert self.passwords is not None
        self.passwords.refresh()
        entries = self.passwords.entries
        stored = entries.get(user)
        known = stored is not None
        if stored is None:
            if not entries:
                problem = self.passwords.problem
                raise AuthError("the password file has no users"
                                + (f" ({problem})" if problem else ""), identity=user)
            # An unknown user costs a real hash too (another user's, the result
            # ignored): how long the 407 takes must not tell which users exist.
            stored = next(iter(entries.values()))
        key = self.cache.key(user, stored, password)
        if self.cache.hit_key(key):
            return "cached"
        running = self._running.get(key)
        login: Login = "cached"
        if running is None:
            if len(self._running) >= MAX_PENDING:
                raise Refusal("too many logins waiting to be verified; retry shortly",
                              reason=Reason.OVER_CAPACITY, status=503)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(2, thread_name_prefix="portcullis-auth")
            running = self._running[key] = asyncio.get_running_loop().run_in_executor(
                self._executor, passwords.verify, stored, password)
            running.add_done_callback(lambda _: self._running.pop(key, None))
            login = "hashed"
        # Shielded: a client that leaves must not cancel the check others wait for.
        ok = await asyncio.shield(running)
        if not known:
            raise AuthError(f"no user {user} in the password file", identity=user)
        if not ok:
            raise AuthError(f"wrong password for {user}", identity=user)
        self.cache.remember(key)
        return login


async def identify(authenticator: Authenticator, attempt: Attempt, head: RequestHead,
                   target: Authority) -> Login | None:
    """Set `attempt.identity`: the certificate's, else a verified Basic login, else
    none; how a login was verified, if there was one. Raises Refusal (AuthError:
    407) for credentials that do not check out."""
    attempt.host, attempt.port, attempt.is_ip = target.host, target.port, target.is_ip
    attempt.identity = attempt.certified
    if (attempt.certified is not None or authenticator.passwords is None
            or attempt.mode is Mode.TRANSPARENT):
        # A certificate is the identity; a proxy without a password file reads no
        # logins (the field is still never forwarded); a redirected client does
        # not know there is a proxy to log in to.
        return None
    credentials = parse_proxy_authorization(head.get_all("proxy-authorization"))
    if credentials is None:
        return None
    attempt.identity = credentials.user  # tried: logged as such if it fails, proven if not
    return await authenticator.verify(credentials.user, credentials.password)
