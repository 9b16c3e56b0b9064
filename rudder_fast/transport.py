"""The one place that talks HTTP: a urllib3 pool posting batch bodies to the data plane."""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from typing import Final

import urllib3

BATCH_PATH: Final = "/v1/batch"
# gzip level 1: on event JSON it already compresses ~5-8x, at several times the speed of the default
# level 6, and the sender's CPU, not the network, is what limits a host's throughput.
GZIP_LEVEL: Final = 1


def batch_url(data_plane_url: str) -> str:
    """The batch endpoint, whether the user gave the data plane's base URL or the endpoint itself."""
    url = data_plane_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"data plane URL must start with http:// or https://, not {data_plane_url!r}")
    if url.endswith(BATCH_PATH):
        return url
    return url + BATCH_PATH


def redact_url(url: str) -> str:
    """The URL without any user:password part, for logs and status."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return scheme + sep + rest


def gzip_bytes(body: bytes, level: int = GZIP_LEVEL) -> bytes:
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    return comp.compress(body) + comp.flush()


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: str
    retry_after: str | None


class TransportError(Exception):
    """The request did not get an HTTP answer (connection refused/reset, timeout, TLS failure)."""


class Transport:
    """Posts bodies to one batch URL over a keep-alive pool. Thread-safe; urllib3's retries are off."""

    def __init__(
        self,
        url: str,
        write_key: str,
        *,
        gzip: bool = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        pool_size: int = 4,
        ca_bundle: str | None = None,
        user_agent: str = "rudder-fast",
    ) -> None:
        self.url = batch_url(url)
        self.gzip = gzip
        token = base64.b64encode(f"{write_key}:".encode()).decode("ascii")
        self._headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "User-Agent": user_agent,
        }
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        kwargs: dict[str, object] = {}
        if ca_bundle:
            kwargs["ca_certs"] = ca_bundle
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=pool_size,
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            cert_reqs="CERT_REQUIRED",
            **kwargs,  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:
        return f"<Transport url={redact_url(self.url)!r} gzip={self.gzip}>"

    def post(self, body: bytes) -> Response:
        data = gzip_bytes(body) if self.gzip else body
        try:
            resp = self._pool.request("POST", self.url, body=data, headers=self._headers, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            raise TransportError(_describe(exc)) from None
        text = resp.data[:500].decode("utf-8", "replace").strip()
        return Response(status=resp.status, body=text, retry_after=resp.headers.get("Retry-After"))

    def close(self) -> None:
        self._pool.clear()


def _describe(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    inner = reason if isinstance(reason, Exception) else exc
    return f"{type(inner).__name__}: {inner}".split(" (Caused by")[0][:300]
