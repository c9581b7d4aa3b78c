"""A second real registry that wants Bearer tokens, with a token service on its own host.

docker-registry (the testbed's binary) serves the testbed's storage as `us.icr.io`
with `auth: token`, so `/v2/` answers `401 Bearer realm="https://auth.icr.io/token"`
as IBM's registry and Docker Hub do; blobs still redirect to the testbed's
`dd0.icr.io`. The token service is a small HTTPS server here that signs JWTs
(ES256, the signing certificate in the `x5c` header) which the registry checks
against its `rootcertbundle`: the same verification a real token has to pass.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support.testbed import Testbed, https_request
from tests.support.testbed.pki import make_pki
from tests.support.testbed.procs import ManagedProcess, clean_env, require_binary, require_free
from tests.support.testbed.registry import RegistryConfig, write_config

AUTH_NAME = "auth.icr.io"
ISSUER = "portcullis-test-issuer"
SERVICE = "us.icr.io"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class TokenPolicy:
    """What the token service grants; tests change it between runs."""

    anonymous: bool = True
    credentials: tuple[str, str] = ("alice", "s3cret")
    issued: list[str] = field(default_factory=list)  # "anonymous" or the user, per token


class _Signer:
    def __init__(self, directory: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portcullis token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))
        self.bundle = directory / "token-signer.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def token(self, subject: str, repository: str) -> str:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
                  "access": [{"type": "repository", "name": repository, "actions": ["pull"]}]}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(),
                                                  ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _handler(signer: _Signer, policy: TokenPolicy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, status: int, body: dict[str, object], **headers: str) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                self._answer(404, {"error": "not found"})
                return
            query = parse_qs(url.query)
            scope = query.get("scope", [""])[0]
            repository = scope.split(":")[1] if scope.count(":") == 2 else ""
            auth = self.headers.get("Authorization", "")
            user = "anonymous"
            if auth.startswith("Basic "):
                pair = base64.b64decode(auth[6:]).decode(errors="replace")
                if tuple(pair.split(":", 1)) != policy.credentials:
                    self._answer(401, {"error": "bad credentials"})
                    return
                user = policy.credentials[0]
            elif not policy.anonymous:
                self._answer(401, {"error": "authentication required"},
                             WWW_Authenticate='Basic realm="token"')
                return
            policy.issued.append(user)
            token = signer.token("" if user == "anonymous" else user, repository)
            self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

    return Handler


@dataclass
class TokenRegistry:
    registry_ip: str
    auth_ip: str
    ca_bundle: Path  # this registry's CA and the testbed's (for dd0.icr.io)
    policy: TokenPolicy
    hosts: dict[str, list[str]]  # for Portcullis's static resolver


@contextlib.contextmanager
def start_token_registry(bed: Testbed, workdir: Path, *, registry_ip: str = "127.0.0.18",
                         auth_ip: str = "127.0.0.19") -> Iterator[TokenRegistry]:
    require_free((registry_ip, 443), "token-auth registry")
    require_free((auth_ip, 443), "token service")
    workdir.mkdir(parents=True, exist_ok=True)
    pki = make_pki(workdir / "pki", registry_names=["us.icr.io", registry_ip],
                   cdn_names=[AUTH_NAME, auth_ip])
    signer = _Signer(workdir)
    policy = TokenPolicy()
    server = ThreadingHTTPServer((auth_ip, 443), _handler(signer, policy))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.cdn.cert), str(pki.cdn.key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cfg = RegistryConfig(address=(registry_ip, 443), name="us.icr.io",
                         storage_root=bed.storage_root, cert=pki.registry, ca_pem=pki.ca_pem,
                         redirect_base=f"https://{bed.cdn_name}/", workdir=workdir)
    path = write_config(cfg)
    doc = json.loads(path.read_text())
    doc["auth"] = {"token": {"realm": f"https://{AUTH_NAME}/token", "service": SERVICE,
                             "issuer": ISSUER, "rootcertbundle": str(signer.bundle)}}
    path.write_text(json.dumps(doc, indent=2))
    registry = ManagedProcess("docker-registry (token auth)",
                              [require_binary("docker-registry", "docker-registry"), "serve",
                               str(path)], workdir / "registry.log", clean_env())
    try:
        registry.wait_ready(lambda: https_request(
            "us.icr.io", (registry_ip, 443), "/v2/", ca_pem=pki.ca_pem, timeout=2).status == 401,
            10)
        bundle = workdir / "ca-bundle.pem"
        bundle.write_text(pki.ca_pem.read_text() + bed.ca_pem.read_text())
        yield TokenRegistry(registry_ip, auth_ip, bundle, policy,
                            {"us.icr.io": [registry_ip], AUTH_NAME: [auth_ip],
                             bed.cdn_name: bed.hosts[bed.cdn_name]})
    finally:
        registry.stop()
        server.shutdown()
        server.server_close()
