"""Which URLs Newsdesk may connect to: a feed URL or a webhook URL is user input, so it must
not reach the machine's own services or its private network (SSRF) unless a setting allows it.
Feeds (ingestion) and webhooks (serving) share this one guard, each with its own settings:
``Hints`` names them in the refusal messages.

Two checks. ``check_url`` looks at the URL alone (scheme, host, an IP literal) and is cheap
enough to run when a feed is added and on every redirect hop. ``GuardedBackend`` is the
network backend of the fetcher's HTTP client: it resolves the host itself, refuses the
connection if ANY resolved address is blocked, and connects to the address it checked. Doing
it at connect time covers every redirect hop and closes the DNS-rebinding gap between a
check and a second lookup by the client. ``GuardedTransport`` is an httpx transport that
connects through it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HTTP_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class Hints:
    """The settings a refusal message names (the feeds' by default)."""

    private: str = "NEWSDESK_ALLOW_PRIVATE_ADDRESSES"
    loopback: str = "NEWSDESK_ALLOW_LOOPBACK"


FEED_HINTS = Hints()


class BlockedAddressError(Exception):
    """The URL's host is (or resolves to) an address the settings do not allow."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def address_block_reason(
    ip: IPAddress, *, allow_private: bool, allow_loopback: bool, hints: Hints = FEED_HINTS
) -> str | None:
    """Why ``ip`` must not be fetched, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip.is_loopback:
        return None if allow_loopback else f"a loopback address ({hints.loopback}=false)"
    # 0.0.0.0 reaches the local host on Linux; multicast and reserved ranges are never feeds.
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_link_local:
        return None if allow_private else f"a link-local address ({hints.private}=false)"
    if ip.is_private or not ip.is_global:
        return None if allow_private else f"a private address ({hints.private}=false)"
    return None


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_url(
    url: str,
    *,
    allow_private: bool,
    allow_loopback: bool,
    allow_file: bool,
    schemes: Iterable[str] = ("http", "https", "file"),
    hints: Hints = FEED_HINTS,
) -> str | None:
    """Why ``url`` cannot be fetched (without a DNS lookup), or None when it can."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises on a bad port
    except ValueError as exc:
        return f"invalid URL: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        return f"unsupported URL scheme {scheme or '(none)'!r}: only {allowed}"
    if scheme == "file":
        if not allow_file:
            return "file:// URLs are not allowed (NEWSDESK_ALLOW_FILE_URLS=false)"
        if parts.netloc not in ("", "localhost"):
            return f"file:// URL names a remote host {parts.netloc!r}"
        if not parts.path:
            return "file:// URL without a path"
        return None
    host = parts.hostname
    if not host:
        return "URL without a host"
    if port == 0:
        return "URL with port 0"
    ip = _ip_literal(host)
    if ip is not None:
        reason = address_block_reason(
            ip, allow_private=allow_private, allow_loopback=allow_loopback, hints=hints
        )
        if reason:
            return f"refused {host}: {reason}"
    elif host.lower() == "localhost" or host.lower().endswith(".localhost"):
        if not allow_loopback:
            return f"refused {host}: a loopback name ({hints.loopback}=false)"
    return None


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    ip = _ip_literal(host)
    if ip is not None:
        return [str(ip)]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    if not seen:
        raise httpcore.ConnectError(f"cannot resolve {host!r}: no addresses")
    return list(seen)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that checks every resolved address before connecting."""

    def __init__(
        self,
        *,
        allow_private: bool,
        allow_loopback: bool,
        inner: httpcore.AsyncNetworkBackend | None = None,
        hints: Hints = FEED_HINTS,
    ) -> None:
        self._allow_private = allow_private
        self._allow_loopback = allow_loopback
        self._hints = hints
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port)
        for address in addresses:
            reason = address_block_reason(
                ipaddress.ip_address(address.split("%", 1)[0]),
                allow_private=self._allow_private,
                allow_loopback=self._allow_loopback,
                hints=self._hints,
            )
            if reason:
                shown = host if address == host else f"{host} ({address})"
                raise BlockedAddressError(f"refused {shown}: {reason}")
        last: Exception | None = None
        for address in addresses:  # connect to what was checked, trying each in turn
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, connecting through ``GuardedBackend``.

    httpx does not expose httpcore's ``network_backend``; the pool it builds is replaced by
    an identical one that connects through the guard.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        allow_loopback: bool,
        max_connections: int = 10,
        ssl_context: ssl.SSLContext | None = None,
        hints: Hints = FEED_HINTS,
    ) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
            network_backend=GuardedBackend(
                allow_private=allow_private, allow_loopback=allow_loopback, hints=hints
            ),
        )
