"""The `--image` part of `portcullis check`: a real, minimal pull.

`GET /v2/`, a token from the realm the registry names in `WWW-Authenticate`,
the manifest (an index resolves to its first manifest), then the first bytes of
every blob, following every redirect. Each host the pull touches is reported to
`touch` so that it gets its own DNS/TCP/TLS/HTTP row: that is how a blob
redirect to a delivery host nobody allowed shows up by name.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from portcullis.basics.errors import ToolError
from portcullis.tools.check_report import PullStep, Status
from portcullis.tools.netprobe import Kind, Problem, Route, open_tunnel
from portcullis.tools.tlsprobe import Reply, http_request, tls_handshake

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, DOCKER_V1))
INDEXES = (OCI_INDEX, DOCKER_LIST)
KIND_NAMES = {OCI_MANIFEST: "OCI manifest", DOCKER_MANIFEST: "Docker v2 manifest",
              DOCKER_V1: "Docker v1 manifest"}

MAX_REDIRECTS = 6
BLOB_BYTES = 4096
DOC_BYTES = 4 << 20  # registries cap manifests at 4 MiB

# touch(host, port, role): make sure the host gets a row of its own.
Touch = Callable[[str, int, str], None]


@dataclass(frozen=True)
class ImageRef:
    host: str
    port: int
    repository: str
    reference: str  # a tag, or a digest

    def __str__(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.host}/{self.repository}{sep}{self.reference}"


def parse_image(text: str) -> ImageRef:
    """`[host[:port]/]repo[:tag|@digest]` as docker and skopeo read it."""
    rest, at, digest = text.strip().partition("@")
    first, slash, path = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host_port = first
    else:  # Docker Hub's short form: nginx, library/nginx, user/app
        host_port, path = "registry-1.docker.io", rest if slash else f"library/{rest}"
    repo, _, tag = path.rpartition(":") if ":" in path else (path, "", "")
    reference = digest if at else (tag or "latest")
    host, _, port = host_port.partition(":")
    if not repo or not re.fullmatch(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*", repo):
        raise ValueError(f"image {text!r}: {repo!r} is not a repository name")
    if at and not re.fullmatch(r"[a-z0-9]+:[a-f0-9]{32,}", digest):
        raise ValueError(f"image {text!r}: {digest!r} is not a digest")
    if port and not port.isdigit():
        raise ValueError(f"image {text!r}: {port!r} is not a port")
    return ImageRef(host.lower(), int(port or 443), repo, reference)


class StepFailed(ToolError):
    def __init__(self, problem: Problem, host: str, hops: list[str]) -> None:
        super().__init__(problem.message)
        self.problem = problem
        self.host = host
        self.hops = hops


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {realm:..., service:...})."""
    scheme, _, params = header.strip().partition(" ")
    values = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', params)}
    return scheme.lower(), values


class PullProbe:
    def __init__(self, route: Route, image: ImageRef, touch: Touch,
                 credentials: tuple[str, str] | None = None) -> None:
        self.route = route
        self.image = image
        self.touch = touch
        self.credentials = credentials
        self.steps: list[PullStep] = []
        self._auth: str | None = None
        # Hosts that already failed to connect: later blobs redirected there fail
        # at once instead of each waiting out another timeout.
        self._dead: dict[tuple[str, int], Problem] = {}
        self._base = f"https://{image.host}" + ("" if image.port == 443 else f":{image.port}")

    def _fetch(self, url: str, headers: dict[str, str], role: str, max_body: int
               ) -> tuple[Reply, list[str]]:
        """GET `url`, following redirects; credentials never follow to another host."""
        hops: list[str] = []
        origin = urlsplit(url).hostname
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            host, port = (parts.hostname or ""), parts.port or 443
            if parts.scheme != "https":
                raise StepFailed(Problem(Kind.HTTP, f"refusing non-https URL {url}"), host, hops)
            hops.append(host if port == 443 else f"{host}:{port}")
            self.touch(host, port, role if host == origin else "blob")
            sent = {k: v for k, v in headers.items() if k != "Authorization" or host == origin}
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            if (host, port) in self._dead:
                raise StepFailed(self._dead[host, port], host, hops)
            try:
                sock, _ = open_tunnel(self.route, host, port)
                tls, _ = tls_handshake(self.route, sock, host)
            except Problem as problem:
                self._dead[host, port] = problem
                raise StepFailed(problem, host, hops) from None
            try:
                reply = http_request(self.route, tls, host, port, "GET", target or "/", sent,
                                     max_body)
            except Problem as problem:
                raise StepFailed(problem, host, hops) from None
            location = reply.headers.get("Location")
            if reply.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            return reply, hops
        raise StepFailed(Problem(Kind.HTTP, f"more than {MAX_REDIRECTS} redirects"), host, hops)

    def _record(self, step: str, target: str, status: Status, detail: str,
                hops: list[str], kind: Kind | None = None) -> PullStep:
        entry = PullStep(step, target, status, detail, kind=kind, hops=hops)
        self.steps.append(entry)
        return entry

    def _failed(self, step: str, target: str, exc: StepFailed) -> None:
        p = exc.problem
        where = f"at {exc.host}: " if exc.hops and exc.host != self.image.host else ""
        self.steps.append(PullStep(step, target, Status.FAIL, where + p.message, p.kind,
                                   p.reason, p.rule, exc.host, exc.hops))

    def _unexpected(self, step: str, target: str, reply: Reply, hops: list[str]) -> None:
        status = reply.status
        kind, why = Kind.HTTP, ""
        if status in (401, 403):
            kind = Kind.AUTH  # the diagnosis line says what to pass
        elif status == 404:
            why = ": check the image name and tag"
        entry = self._record(step, target, Status.FAIL, f"{status} {reply.reason}{why}", hops,
                             kind)
        entry.host = hops[-1].partition(":")[0] if hops else None

    def run(self) -> list[PullStep]:
        try:
            if self._api() and (manifest := self._manifest()) is not None:
                self._blobs(manifest)
        except StepFailed:
            pass  # recorded by the step that raised it
        return self.steps

    def _api(self) -> bool:
        url = f"{self._base}/v2/"
        try:
            reply, hops = self._fetch(url, {}, "api", 4096)
        except StepFailed as exc:
            self._failed("api", url, exc)
            return False
        if reply.status == 200:
            self._record("api", url, Status.OK, "200, no authentication needed", hops)
            return True
        scheme, params = parse_challenge(reply.headers.get("WWW-Authenticate", ""))
        if reply.status == 401 and scheme == "bearer" and params.get("realm"):
            self._record("api", url, Status.OK, f"401, token realm {params['realm']}", hops)
            return self._token(params)
        if reply.status == 401 and scheme == "basic":
            self._record("api", url, Status.OK, "401, Basic authentication", hops)
            self._auth = self._basic()
            return True
        self._unexpected("api", url, reply, hops)
        return False

    def _basic(self) -> str | None:
        if self.credentials is None:
            return None
        pair = ":".join(self.credentials).encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _token(self, params: dict[str, str]) -> bool:
        query = {"scope": f"repository:{self.image.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        basic = self._basic()
        headers = {"Authorization": basic} if basic else {}
        who = "with --user" if basic else "anonymously"
        try:
            reply, hops = self._fetch(url, headers, "token", 65536)
        except StepFailed as exc:
            self._failed("token", realm, exc)
            return False
        token = None
        if reply.status == 200:
            try:
                doc = json.loads(reply.body)
                token = doc.get("token") or doc.get("access_token")
            except (ValueError, AttributeError):
                token = None
        if not token:
            self._unexpected("token", realm, reply, hops)
            return False
        self._auth = f"Bearer {token}"
        self._record("token", realm, Status.OK, f"token issued {who}", hops)
        return True

    def _headers(self, **extra: str) -> dict[str, str]:
        return {**({"Authorization": self._auth} if self._auth else {}), **extra}

    def _get_manifest(self, step: str, reference: str) -> dict[str, Any] | None:
        url = f"{self._base}/v2/{self.image.repository}/manifests/{reference}"
        target = f"{self.image.repository}:{reference}" if step == "manifest" else reference
        try:
            reply, hops = self._fetch(url, self._headers(Accept=ACCEPT), "api", DOC_BYTES)
        except StepFailed as exc:
            self._failed(step, target, exc)
            return None
        if reply.status != 200:
            self._unexpected(step, target, reply, hops)
            return None
        try:
            doc = json.loads(reply.body)
            assert isinstance(doc, dict)
        except (ValueError, AssertionError):
            self._record(step, target, Status.FAIL, "the manifest is not a JSON object", hops,
                         Kind.HTTP)
            return None
        media = doc.get("mediaType") or reply.headers.get_content_type()
        doc["mediaType"] = media
        if media in INDEXES:
            entries = doc.get("manifests") or []
            if not entries or "digest" not in entries[0]:
                self._record(step, target, Status.FAIL, "an empty index", hops, Kind.HTTP)
                return None
            first = entries[0]
            platform = first.get("platform") or {}
            where = "/".join(str(platform[k]) for k in ("os", "architecture") if k in platform)
            self._record(step, target, Status.OK,
                         f"index of {len(entries)}; first {where or 'manifest'}", hops)
            return self._get_manifest("index", str(first["digest"]))
        count = len(doc.get("layers") or doc.get("fsLayers") or [])
        kind = KIND_NAMES.get(media, media)
        layers = "1 layer" if count == 1 else f"{count} layers"
        self._record(step, target, Status.OK, f"{kind}, {layers}", hops)
        return doc

    def _manifest(self) -> dict[str, Any] | None:
        return self._get_manifest("manifest", self.image.reference)

    def _blobs(self, manifest: dict[str, Any]) -> None:
        digests: list[tuple[str, str]] = []
        if isinstance(manifest.get("config"), dict):
            digests.append(("config", str(manifest["config"].get("digest"))))
        for layer in manifest.get("layers") or []:
            digests.append(("layer", str(layer.get("digest"))))
        for layer in manifest.get("fsLayers") or []:
            digests.append(("layer", str(layer.get("blobSum"))))
        for digest, what in dict((d, w) for w, d in digests).items():
            self._blob(digest, what)

    def _blob(self, digest: str, what: str) -> None:
        url = f"{self._base}/v2/{self.image.repository}/blobs/{digest}"
        target = f"{what} {digest[:19]}"
        headers = self._headers(Range=f"bytes=0-{BLOB_BYTES - 1}")
        try:
            reply, hops = self._fetch(url, headers, "api", BLOB_BYTES)
        except StepFailed as exc:
            self._failed("blob", target, exc)
            return
        if reply.status not in (200, 206) or not reply.body:
            self._unexpected("blob", target, reply, hops)
            return
        via = f" via {hops[-1]}" if len(hops) > 1 else ""
        self._record("blob", target, Status.OK, f"{reply.status}, {len(reply.body)} bytes{via}",
                     hops)
