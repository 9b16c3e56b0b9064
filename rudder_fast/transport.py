"""The one place that talks HTTP: a urllib3 pool posting batch bodies to the data plane.

Every request has a deadline: connect timeout + read timeout from its start. urllib3's timeouts bound
each socket operation, not the request, so an answer that trickles in a byte at a time (a broken proxy,
a congested link) would hold a worker forever. A watchdog thread (:class:`Deadlines`) shuts down the
socket of a request still running at its deadline, which ends the blocked read or write at once; the
request fails like any other connection error and is retried.

Name resolution is bounded by the connect timeout too (:class:`Resolver`): the C library's
``getaddrinfo`` waits for a silent name server as long as ``resolv.conf`` says (5 s x 2 attempts by
default) and cannot be interrupted, so it runs in a thread of its own, and a new connection waits for it
at most the connect timeout. Each failure is said in one plain line, with its kind
(:class:`~rudder_fast.retry.ErrorKind`), which the retry policy reads: a refused certificate is not
retried as often as a refused connection.
"""

from __future__ import annotations

import base64
import contextlib
import math
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

from . import compression
from .retry import ErrorKind

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


def gzip_bytes(body: bytes | Iterable[bytes], level: int = GZIP_LEVEL) -> bytes:
    return compression.gzip(body, level)  # ISA-L's when installed: see rudder_fast.compression


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: str
    retry_after: str | None


class TransportError(Exception):
    """The request did not get an HTTP answer (connection refused/reset, timeout, TLS failure); ``kind``
    says which kind of failure it was."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.OTHER) -> None:
        super().__init__(message)
        self.kind = kind


AddrInfo = tuple[Any, ...]  # (family, type, proto, canonname, sockaddr), as getaddrinfo gives them


class _Lookup:
    """One ``getaddrinfo`` running in its own thread, and its result."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Sequence[AddrInfo] = ()
        self.error: socket.gaierror | None = None


class Resolver:
    """Name resolution with a timeout (see the module doc). A look-up still running when a caller gives
    up goes on in its daemon thread, and the next callers for the same name wait for that one instead
    of starting another: a silent name server costs one thread per name, not one per attempt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], _Lookup] = {}

    def __repr__(self) -> str:
        return f"<Resolver pending={len(self._pending)}>"

    def resolve(self, host: str, port: int, timeout: float) -> Sequence[AddrInfo]:
        """The addresses of ``host`` (an IP address is returned as is), or ``socket.gaierror``."""
        family = allowed_gai_family()
        if _is_address(host):
            return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)  # numeric: no look-up
        key = (host, port)
        with self._lock:
            lookup = self._pending.get(key)
            if lookup is None:
                lookup = self._pending[key] = _Lookup()
                threading.Thread(
                    target=self._run, args=(key, lookup, family), name="rudder-fast-resolve", daemon=True
                ).start()
        if not lookup.done.wait(timeout):
            raise socket.gaierror(
                socket.EAI_AGAIN, f"no answer from the name server within {timeout:g} s (the connect timeout)"
            )
        if lookup.error is not None:
            raise lookup.error
        return lookup.result

    def _run(self, key: tuple[str, int], lookup: _Lookup, family: socket.AddressFamily) -> None:
        try:
            lookup.result = socket.getaddrinfo(key[0], key[1], family, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            lookup.error = exc
        except (OSError, UnicodeError) as exc:  # an unencodable name: as a failed look-up
            lookup.error = socket.gaierror(socket.EAI_NONAME, str(exc))
        finally:
            with self._lock:
                if self._pending.get(key) is lookup:
                    del self._pending[key]  # the next connection asks again: a name may change
            lookup.done.set()


def _is_address(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.strip("[]"))
    except OSError:
        return False
    return True


def _connect(conn: HTTPConnection, addresses: Sequence[AddrInfo]) -> socket.socket:
    """A socket connected to the first of ``addresses`` that accepts, as urllib3's own
    ``create_connection`` makes it (socket options, source address, connect timeout)."""
    error: Exception | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            if isinstance(conn.timeout, (int, float)):
                sock.settimeout(conn.timeout)
            if conn.source_address:
                sock.bind(conn.source_address)
            sock.connect(address)
        except TimeoutError:
            sock.close()
            error = ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            )
        except OSError as exc:
            sock.close()
            error = NewConnectionError(conn, f"Failed to establish a new connection: {exc}")
        else:
            return sock
    raise error or NewConnectionError(conn, "Failed to establish a new connection: no address")


class _Guard:
    """One request's deadline, its socket once connected, and whether the watchdog cut it off."""

    __slots__ = ("cut", "deadline", "expired", "sock")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self.expired = False
        self.cut = False  # its socket was shut down at the deadline: that is why the request failed

    def shut(self) -> None:
        if self.sock is not None:
            self.cut = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


class Deadlines:
    """Ends requests that overrun their deadline by shutting down their socket (see the module doc).

    ``guard`` arms a deadline for the calling thread's request; the pool's connections report the socket
    they use with ``attach``; one daemon thread, started on first use, sleeps until the earliest deadline.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._guards: set[_Guard] = set()
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._wake_at = math.inf  # when the watcher, asleep, wakes next: a later deadline need not wake it

    def __repr__(self) -> str:
        return f"<Deadlines active={len(self._guards)}>"

    @contextlib.contextmanager
    def guard(self, seconds: float) -> Iterator[_Guard]:
        guard = _Guard(time.monotonic() + seconds)
        self._local.guard = guard
        with self._cond:
            self._guards.add(guard)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._watch, name="rudder-fast-deadlines", daemon=True)
                self._thread.start()
            if guard.deadline < self._wake_at:
                self._wake_at = guard.deadline  # (the watcher sets its own when it goes back to sleep)
                self._cond.notify()
        try:
            yield guard
        finally:
            self._local.guard = None
            with self._cond:
                self._guards.discard(guard)

    def attach(self, sock: socket.socket | None) -> None:
        """The socket the calling thread's request now uses (a new or a reused connection's)."""
        guard: _Guard | None = getattr(self._local, "guard", None)
        if guard is None or sock is None:
            return
        with self._cond:
            guard.sock = sock
            if guard.expired:
                guard.shut()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                wake = math.inf
                for guard in self._guards:
                    if guard.expired:
                        continue
                    if guard.deadline <= now:
                        guard.expired = True
                        guard.shut()
                    else:
                        wake = min(wake, guard.deadline)
                self._wake_at = wake
                self._cond.wait(None if wake == math.inf else wake - now)


def _guarded_pools(
    deadlines: Deadlines, resolver: Resolver, resolve_timeout: float
) -> dict[str, type[HTTPConnectionPool]]:
    """Pool classes whose connections resolve names within ``resolve_timeout`` and report their socket
    to ``deadlines`` before each request."""

    def connection(base: type[HTTPConnection]) -> type[HTTPConnection]:
        class Guarded(base):  # type: ignore[valid-type,misc]
            def _new_conn(self) -> socket.socket:
                try:
                    addresses = resolver.resolve(self._dns_host, self.port, resolve_timeout)
                except socket.gaierror as exc:
                    raise NameResolutionError(self.host, self, exc) from exc
                return _connect(self, addresses)

            def connect(self) -> None:
                super().connect()
                deadlines.attach(self.sock)

            def request(self, *args: Any, **kwargs: Any) -> None:
                deadlines.attach(self.sock)  # a reused keep-alive connection (None: connect() will)
                super().request(*args, **kwargs)

        Guarded.__name__ = Guarded.__qualname__ = base.__name__  # urllib3's messages name the class
        return Guarded

    http_pool = type(
        "GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": connection(HTTPConnection)}
    )
    https_pool = type(
        "GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": connection(HTTPSConnection)}
    )
    return {"http": http_pool, "https": https_pool}


class Transport:
    """Posts bodies to one batch URL over a keep-alive pool. Thread-safe; urllib3's retries are off.

    A request without a complete answer ``connect_timeout + read_timeout`` after it started fails with
    :class:`TransportError`, whatever trickles in meanwhile.
    """

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
        proxy: str | None = None,
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
        common: dict[str, Any] = {
            "num_pools": 2,
            "maxsize": pool_size,
            "block": True,
            "retries": False,
            "timeout": urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            "cert_reqs": "CERT_REQUIRED",
            **kwargs,
        }
        self.proxy = redact_url(proxy) if proxy else None
        if proxy:
            # A forward proxy: plain requests for an http data plane, a CONNECT tunnel for https (TLS
            # then runs end to end, verified as always). Credentials in its URL become the
            # Proxy-Authorization header, which urllib3 does not derive by itself.
            parsed = urllib3.util.parse_url(proxy)
            headers = urllib3.make_headers(proxy_basic_auth=unquote(parsed.auth)) if parsed.auth else None
            self._pool: urllib3.PoolManager = urllib3.ProxyManager(
                parsed._replace(auth=None).url, proxy_headers=headers, **common
            )
        else:
            self._pool = urllib3.PoolManager(**common)
        self.deadline_s = connect_timeout + read_timeout
        self._deadlines = Deadlines()
        self._pool.pool_classes_by_scheme = _guarded_pools(self._deadlines, Resolver(), connect_timeout)

    def __repr__(self) -> str:
        via = f" proxy={self.proxy!r}" if self.proxy else ""
        return f"<Transport url={redact_url(self.url)!r} gzip={self.gzip}{via}>"

    def post(self, body: bytes | Iterable[bytes]) -> Response:
        """POST ``body`` (bytes, or consecutive pieces of it: see :func:`batching.body_pieces`)."""
        if isinstance(body, bytes):
            body = (body,)  # joining one bytes object returns it: no copy
        data = gzip_bytes(body) if self.gzip else b"".join(body)
        with self._deadlines.guard(self.deadline_s) as guard:
            try:
                resp = self._pool.request("POST", self.url, body=data, headers=self._headers, redirect=False)
            except urllib3.exceptions.HTTPError as exc:
                if guard.cut:
                    raise TransportError(
                        f"no complete answer within {self.deadline_s:g} s (connect + read timeout)",
                        ErrorKind.TIMEOUT,
                    ) from None
                kind, text = _describe(exc)
                raise TransportError(text, kind) from None
        text = resp.data[:500].decode("utf-8", "replace").strip()
        return Response(status=resp.status, body=text, retry_after=resp.headers.get("Retry-After"))

    def drop_idle(self) -> None:
        """Close the idle keep-alive connections: after a request got no answer, the others are suspect
        (a blackholed path would hold the next request on one until its deadline; a new connection is
        bounded by the connect timeout). Requests in flight finish on theirs."""
        self._pool.clear()

    def close(self) -> None:
        self._pool.clear()
        self._deadlines.close()


# OpenSSL's verification results (X509_V_ERR_*) a user meets, said plainly.
_CERT_PROBLEMS: Final = {
    9: "the data plane's TLS certificate is not valid yet (check this host's clock)",
    10: "the data plane's TLS certificate has expired",
    18: "the data plane's TLS certificate is self-signed: pass its CA with --ca-bundle",
    19: "the data plane's TLS certificate chain has a CA this host does not trust: pass it with --ca-bundle",
    20: "the data plane's TLS certificate is signed by a CA this host does not trust: pass it with "
    "--ca-bundle",
    21: "the data plane's TLS certificate cannot be verified (incomplete chain or unknown CA): pass the CA "
    "with --ca-bundle",
    62: "the data plane's TLS certificate is not for this host name (check the URL)",
    64: "the data plane's TLS certificate is not for this IP address (use the host name in the URL)",
}


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: urllib3 keeps the cause in ``reason`` (and in ``args``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nested in (
            getattr(current, "reason", None),
            current.__cause__,
            current.__context__,
            *current.args,
        ):
            if isinstance(nested, BaseException):
                todo.append(nested)


def _tls_problem(exc: Exception) -> str | None:
    """What TLS refused, said plainly, if that is why the request failed."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            plain = _CERT_PROBLEMS.get(cause.verify_code)
            detail = cause.verify_message or str(cause)
            # "certificate verify failed" first: the words an operator searches for.
            said = f"{plain} ({detail})" if plain else detail
            return f"TLS certificate verify failed: {said}"
        if isinstance(cause, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(cause):
            return "TLS: the server does not speak TLS on this port (should the URL be http://?)"
    return None


def _describe(exc: Exception) -> tuple[ErrorKind, str]:
    """One plain line for a request that got no answer: what failed, and for TLS why."""
    tls = _tls_problem(exc)
    if tls is not None:
        return ErrorKind.TLS, tls
    for cause in _causes(exc):
        if isinstance(cause, urllib3.exceptions.ProxyError):
            inner = cause.original_error if isinstance(cause.original_error, Exception) else cause
            said = f"the proxy failed: {type(inner).__name__}: {inner}".split(" (Caused by")[0]
            return ErrorKind.PROXY, said[:300]
    for cause in _causes(exc):
        if isinstance(cause, urllib3.exceptions.NewConnectionError):
            # "HTTPConnection(host=..., port=...): Failed to ...": the host and port, then the reason.
            said = str(cause).split("): ", 1)[-1].removeprefix("Failed to establish a new connection: ")
            if isinstance(cause, urllib3.exceptions.NameResolutionError):
                return ErrorKind.DNS, f"DNS: {said}"
            return ErrorKind.CONNECT, f"cannot connect to {cause.conn.host}:{cause.conn.port}: {said}"[:300]
    reason = getattr(exc, "reason", None)
    inner = reason if isinstance(reason, Exception) else exc
    if isinstance(inner, TimeoutError):
        kind = ErrorKind.TIMEOUT
    elif isinstance(inner, (ConnectionError, urllib3.exceptions.ProtocolError)):
        kind = ErrorKind.CONNECT
    else:
        kind = ErrorKind.OTHER
    return kind, f"{type(inner).__name__}: {inner}".split(" (Caused by")[0][:300]
