"""Fetch a feed's bytes: the network half of ingestion (feedparser has no timeout).

One ``Fetcher`` (one pooled ``httpx.AsyncClient``) serves a whole poller. Each fetch:
- refuses URLs the guard does not allow (``core.urlguard``), on every redirect hop;
- sends a real User-Agent and the stored ETag / Last-Modified exactly as received;
- follows at most ``fetch_max_redirects`` redirects itself, so a loop gets a clear reason;
- streams the body and aborts past ``fetch_max_bytes`` (counted after decompression);
- finishes within ``fetch_timeout_s`` in all, however slowly a server trickles bytes;
- never raises for a feed's fault: every failure is a ``FetchResult`` with an outcome and a
  reason that end up on the feed.
Concurrency: at most ``fetch_concurrency`` fetches at once, ``fetch_per_host`` per host.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import httpx

from core.urlguard import BlockedAddressError, GuardedTransport, check_url
from ingestion.settings import IngestionSettings

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.8"
)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
PERMANENT_REDIRECTS = frozenset({301, 308})
# Response headers the parser needs (encoding, language); the rest is dropped.
KEPT_HEADERS = ("content-type", "content-language")


class FetchOutcome(StrEnum):
    OK = "ok"
    NOT_MODIFIED = "not_modified"
    HTTP_ERROR = "http_error"  # 4xx/5xx other than the ones below
    GONE = "gone"  # 410: the feed is disabled
    RATE_LIMITED = "rate_limited"  # 429, or 503 with Retry-After
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    REDIRECT_ERROR = "redirect_error"  # a loop, too many, a bad Location
    BLOCKED = "blocked"  # a private/loopback/... address the settings do not allow
    NETWORK_ERROR = "network_error"  # DNS, refused, reset, TLS
    READ_ERROR = "read_error"  # file:// that cannot be read
    INVALID_URL = "invalid_url"

    @property
    def is_error(self) -> bool:
        return self not in (FetchOutcome.OK, FetchOutcome.NOT_MODIFIED)


@dataclass(slots=True)
class FetchResult:
    outcome: FetchOutcome
    url: str
    final_url: str
    status: int | None = None
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    retry_after_s: float | None = None
    reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    # Set when every hop to the body was a permanent redirect (301/308).
    permanent_redirect: str | None = None


def parse_retry_after(
    value: str | None, *, cap_s: float, now: datetime | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), float(cap_s))


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


class _HostSlots:
    """A semaphore per host, dropped again when nobody uses it (hosts come and go)."""

    def __init__(self, per_host: int) -> None:
        self._per_host = per_host
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        entry = self._slots.get(host)
        if entry is None:
            entry = self._slots[host] = (asyncio.Semaphore(self._per_host), [0])
        sem, users = entry
        users[0] += 1
        try:
            async with sem:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                self._slots.pop(host, None)


class _Abort(Exception):
    """Internal: stop the fetch with this result."""

    def __init__(self, result: FetchResult) -> None:
        self.result = result


class Fetcher:
    def __init__(self, settings: IngestionSettings) -> None:
        self._settings = settings
        self._global = asyncio.Semaphore(settings.fetch_concurrency)
        self._hosts = _HostSlots(settings.fetch_per_host)
        self._client = httpx.AsyncClient(
            transport=GuardedTransport(
                allow_private=settings.allow_private_addresses,
                allow_loopback=settings.allow_loopback,
                max_connections=max(settings.fetch_concurrency, 10),
            ),
            timeout=httpx.Timeout(settings.fetch_timeout_s),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": settings.user_agent, "Accept": ACCEPT},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _check(self, url: str, *, redirect: bool) -> str | None:
        s = self._settings
        return check_url(
            url,
            allow_private=s.allow_private_addresses,
            allow_loopback=s.allow_loopback,
            allow_file=s.allow_file_urls,
            # A server must never send us to a local file.
            schemes=("http", "https") if redirect else ("http", "https", "file"),
        )

    async def fetch(
        self, url: str, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        """Fetch ``url``; never raises for the feed's fault (see ``FetchResult.reason``)."""
        started = time.perf_counter()
        result = await self._fetch(url, etag, last_modified)
        result.elapsed_s = time.perf_counter() - started
        return result

    async def _fetch(self, url: str, etag: str | None, last_modified: str | None) -> FetchResult:
        reason = self._check(url, redirect=False)
        if reason:
            outcome = (
                FetchOutcome.BLOCKED if reason.startswith("refused") else FetchOutcome.INVALID_URL
            )
            return FetchResult(outcome, url, url, reason=reason)
        if urlsplit(url).scheme.lower() == "file":
            return await asyncio.to_thread(self._fetch_file, url, etag, last_modified)
        host = (urlsplit(url).hostname or "").lower()
        timeout = self._settings.fetch_timeout_s
        # The host slot first: a fetch waiting for its host holds no global slot.
        async with self._hosts.slot(host), self._global:
            try:
                async with asyncio.timeout(timeout):
                    return await self._fetch_http(url, etag, last_modified)
            except _Abort as abort:
                return abort.result
            except (TimeoutError, httpx.TimeoutException):
                return FetchResult(
                    FetchOutcome.TIMEOUT,
                    url,
                    url,
                    reason=f"no complete answer within {timeout:g} s",
                )
            except BlockedAddressError as exc:
                return FetchResult(FetchOutcome.BLOCKED, url, url, reason=exc.reason)
            except httpx.TooManyRedirects as exc:  # not raised with follow_redirects=False
                return FetchResult(FetchOutcome.REDIRECT_ERROR, url, url, reason=str(exc))
            except (httpx.TransportError, OSError, ssl.SSLError) as exc:
                text = str(exc) or type(exc).__name__
                return FetchResult(FetchOutcome.NETWORK_ERROR, url, url, reason=text)
            except httpx.InvalidURL as exc:
                return FetchResult(FetchOutcome.INVALID_URL, url, url, reason=str(exc))

    async def _fetch_http(
        self, url: str, etag: str | None, last_modified: str | None
    ) -> FetchResult:
        # Echo the validators byte for byte: servers compare them as opaque strings.
        headers: dict[str, str] = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        chain = [url]
        current = url
        permanent = True
        max_redirects = self._settings.fetch_max_redirects
        while True:
            async with self._client.stream("GET", current, headers=headers) as resp:
                status = resp.status_code
                if status not in REDIRECT_STATUSES:
                    result = await self._read(resp, url, current, etag, last_modified)
                    if len(chain) > 1 and permanent:
                        result.permanent_redirect = current
                    return result
                location = resp.headers.get("location")
            if not location:
                return self._redirect_error(url, current, status, "without a Location header")
            target = urldefrag(urljoin(current, location.strip())).url
            reason = self._check(target, redirect=True)
            if reason:
                outcome = (
                    FetchOutcome.BLOCKED
                    if reason.startswith("refused")
                    else FetchOutcome.REDIRECT_ERROR
                )
                return FetchResult(
                    outcome, url, target, status=status, reason=f"redirect to {target}: {reason}"
                )
            if target in chain:
                loop = " -> ".join([*chain[chain.index(target) :], target])
                return self._redirect_error(url, current, status, f"loop: {loop}")
            if len(chain) > max_redirects:
                return self._redirect_error(
                    url, current, status, f"more than {max_redirects} redirects (at {target})"
                )
            permanent = permanent and status in PERMANENT_REDIRECTS
            chain.append(target)
            current = target

    @staticmethod
    def _redirect_error(url: str, current: str, status: int, what: str) -> FetchResult:
        return FetchResult(
            FetchOutcome.REDIRECT_ERROR, url, current, status=status, reason=f"redirect {what}"
        )

    async def _read(
        self,
        resp: httpx.Response,
        url: str,
        final_url: str,
        sent_etag: str | None,
        sent_last_modified: str | None,
    ) -> FetchResult:
        status = resp.status_code
        s = self._settings
        if status == 304:
            return FetchResult(
                FetchOutcome.NOT_MODIFIED,
                url,
                final_url,
                status=status,
                etag=resp.headers.get("etag", sent_etag),
                last_modified=resp.headers.get("last-modified", sent_last_modified),
            )
        if 200 <= status < 300:
            body = await self._read_body(resp, url, final_url)
            kept = {k: resp.headers[k] for k in KEPT_HEADERS if k in resp.headers}
            return FetchResult(
                FetchOutcome.OK,
                url,
                final_url,
                status=status,
                body=body,
                etag=resp.headers.get("etag"),
                last_modified=resp.headers.get("last-modified"),
                headers=kept,
            )
        phrase = f"HTTP {status} {resp.reason_phrase}".strip()
        retry_after = parse_retry_after(resp.headers.get("retry-after"), cap_s=s.retry_after_cap_s)
        if status == 410:
            return FetchResult(FetchOutcome.GONE, url, final_url, status=status, reason=phrase)
        if status == 429 or (status == 503 and retry_after is not None):
            wait = f"; Retry-After {retry_after:g} s" if retry_after is not None else ""
            return FetchResult(
                FetchOutcome.RATE_LIMITED,
                url,
                final_url,
                status=status,
                retry_after_s=retry_after,
                reason=phrase + wait,
            )
        return FetchResult(FetchOutcome.HTTP_ERROR, url, final_url, status=status, reason=phrase)

    async def _read_body(self, resp: httpx.Response, url: str, final_url: str) -> bytes:
        cap = self._settings.fetch_max_bytes
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise _Abort(
                FetchResult(
                    FetchOutcome.TOO_LARGE,
                    url,
                    final_url,
                    status=resp.status_code,
                    reason=f"body of {declared} bytes exceeds the {_mib(cap)} cap",
                )
            )
        chunks: list[bytes] = []
        size = 0
        # aiter_bytes decompresses: the cap applies to what we would parse (no gzip bombs).
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise _Abort(
                    FetchResult(
                        FetchOutcome.TOO_LARGE,
                        url,
                        final_url,
                        status=resp.status_code,
                        reason=f"body exceeds the {_mib(cap)} cap (aborted after {size} bytes)",
                    )
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _fetch_file(self, url: str, etag: str | None, last_modified: str | None) -> FetchResult:
        """A local file as a feed (offline use): its size and mtime act as validators."""
        path = Path(url2pathname(unquote(urlsplit(url).path)))
        try:
            st = path.stat()
        except OSError as exc:
            return FetchResult(
                FetchOutcome.READ_ERROR, url, url, reason=f"cannot read {path}: {exc.strerror}"
            )
        if not path.is_file():
            return FetchResult(FetchOutcome.READ_ERROR, url, url, reason=f"{path} is not a file")
        file_etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        file_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        if etag == file_etag or (not etag and last_modified == file_modified):
            return FetchResult(
                FetchOutcome.NOT_MODIFIED, url, url, etag=file_etag, last_modified=file_modified
            )
        cap = self._settings.fetch_max_bytes
        if st.st_size > cap:
            return FetchResult(
                FetchOutcome.TOO_LARGE,
                url,
                url,
                reason=f"file of {st.st_size} bytes exceeds the {_mib(cap)} cap",
            )
        try:
            with open(path, "rb") as f:
                body = f.read(cap + 1)
        except OSError as exc:
            return FetchResult(
                FetchOutcome.READ_ERROR, url, url, reason=f"cannot read {path}: {exc.strerror}"
            )
        if len(body) > cap:
            return FetchResult(
                FetchOutcome.TOO_LARGE, url, url, reason=f"file exceeds the {_mib(cap)} cap"
            )
        return FetchResult(
            FetchOutcome.OK, url, url, body=body, etag=file_etag, last_modified=file_modified
        )
