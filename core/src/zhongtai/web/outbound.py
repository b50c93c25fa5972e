"""Outbound HTTP to user-supplied URLs (webhooks) without server-side request forgery.

A URL a project member registers must not reach the platform's own network: loopback,
private and link-local ranges, the shared address space (100.64.0.0/10) and cloud
metadata services are refused. Two checks guard this:

* :func:`check_url` when the URL is saved, so a member learns at once that it is refused;
* :func:`safe_client`, whose connections resolve the host themselves and vet every
  address again at connect time, then connect to the vetted address. A name that
  resolved to a public address when it was saved and to ``127.0.0.1`` when it is used
  (DNS rebinding) is therefore still refused.

:func:`post_safely` ties them together and follows only 307/308 redirects, re-checking
each target.

Operators may allow networks in CIDR notation (``allow=["10.0.0.0/8"]``), for example
to deliver to an internal service on purpose.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import httpcore
import httpx

__all__ = ["UnsafeURL", "check_url", "post_safely", "safe_client"]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeURL(ValueError):
    """A URL, or the address it resolves to, must not be contacted.

    The message names the URL (or host) and the reason, for example
    ``"http://127.0.0.1:6379/: 127.0.0.1 is a loopback address"``.
    """


_SCHEMES = frozenset({"http", "https"})

# Names that reach a metadata service on some cloud regardless of what public DNS says.
_METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data"}
)
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
# ipaddress has no property for these two.
_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

# Redirects that keep method and body; 301/302/303 would turn a POST into a GET.
_FOLLOWED_REDIRECTS = frozenset({307, 308})


def _networks(allow: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse the operator's allowed networks; a malformed entry is a configuration error."""
    networks = []
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as exc:
            raise ValueError(f"allowed network {entry!r} is not valid CIDR: {exc}") from None
    return tuple(networks)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for, if it is one of the embedding forms."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)  # (server, client): both must be acceptable
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    # IPv4-compatible ::a.b.c.d (deprecated); :: and ::1 are IPv6's own.
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return [ipaddress.IPv4Address(int(address))]
    return []


def _kind(address: IPAddress) -> str | None:
    """What kind of non-public address ``address`` is, or ``None`` if it is public unicast."""
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address in _SHARED_ADDRESS_SPACE:
        return "in the shared address space 100.64.0.0/10"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def _is_allowed(address: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in allowed)


def _refusal(address: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why ``address`` must not be contacted, or ``None`` if it may be."""
    if _is_allowed(address, allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded:
            for inner in embedded:
                kind = None if _is_allowed(inner, allowed) else _kind(inner)
                if kind is not None:
                    return f"{address} embeds {inner}, which is {kind}"
            return None
    kind = _kind(address)
    return None if kind is None else f"{address} is {kind}"


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in resolver order, without duplicates."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _vet_host(host: str, port: int, allowed: Sequence[IPNetwork], label: str) -> list[IPAddress]:
    """Resolve ``host`` and return its addresses if every one of them may be contacted.

    Raises:
        UnsafeURL: the name is a metadata name, does not resolve, or any address is refused.
    """
    if host.lower().rstrip(".") in _METADATA_NAMES:
        raise UnsafeURL(f"{label}: {host} is a cloud metadata host name")
    addresses = _resolve(host, port)
    if not addresses:
        raise UnsafeURL(f"{label}: {host} does not resolve")
    for address in addresses:
        reason = _refusal(address, allowed)
        if reason is not None:
            raise UnsafeURL(f"{label}: {reason}")
    return addresses


def _host_and_port(url: str) -> tuple[str, int]:
    """The host (as httpx will send it to the resolver) and port of an acceptable URL.

    Parsing with httpx keeps this check and the client in agreement about which host a
    URL names.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeURL(f"{url}: not a valid URL ({exc})") from None
    if parsed.scheme not in _SCHEMES:
        raise UnsafeURL(f"{url}: scheme must be http or https, not {parsed.scheme or 'none'!r}")
    if parsed.userinfo:
        raise UnsafeURL(f"{url}: user name or password in the URL is not allowed")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise UnsafeURL(f"{url}: a host is required")
    port = parsed.port if parsed.port is not None else (443 if parsed.scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise UnsafeURL(f"{url}: port {port} is out of range 1-65535")
    return host, port


def check_url(url: str, *, allow: Sequence[str] = ()) -> None:
    """Refuse a URL that may reach an internal service; call it when a URL is registered.

    The scheme must be http or https, the URL must name a host and no user info, and the
    port must be 1-65535. The host is resolved and every address must be public unicast,
    unless it lies in one of the ``allow`` networks. IPv6 forms that embed an IPv4
    address (mapped, compatible, 6to4, NAT64, Teredo) are judged by that IPv4 address.

    This check alone does not stop DNS rebinding; send with :func:`safe_client`.

    Args:
        url: the URL to check.
        allow: networks in CIDR notation that are accepted although not public,
            e.g. ``["10.0.0.0/8"]``.

    Raises:
        UnsafeURL: with the reason the URL is refused.
        ValueError: an ``allow`` entry is not valid CIDR.
    """
    allowed = _networks(allow)
    host, port = _host_and_port(url)
    _vet_host(host, port, allowed, label=url)


class _VettingBackend(httpcore.NetworkBackend):
    """Resolves, vets and connects to an address, so the address used is the one vetted.

    httpcore passes the URL's host name separately to ``start_tls`` as
    ``server_hostname``, so TLS SNI and certificate checks still use the name.
    """

    def __init__(self, allowed: Sequence[IPNetwork]) -> None:
        self._allowed = tuple(allowed)
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _vet_host(host, port, self._allowed, label=f"{host}:{port}")
        options = list(socket_options) if socket_options is not None else None
        error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None  # _vet_host returns at least one address
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise UnsafeURL(f"{path}: Unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _VettingTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connection pool connects through :class:`_VettingBackend`."""

    def __init__(self, allowed: Sequence[IPNetwork]) -> None:
        ssl_context = httpx.create_ssl_context(trust_env=False)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        # HTTPTransport has no parameter for the network backend: replace its pool with
        # one built the same way (see httpx/_transports/default.py) plus our backend.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_VettingBackend(allowed),
        )


def safe_client(*, allow: Sequence[str] = (), timeout: float = 10.0) -> httpx.Client:
    """An httpx client that refuses, at connect time, any address :func:`check_url` refuses.

    The client ignores proxy settings from the environment and does not follow redirects;
    use :func:`post_safely` to follow them. A refused connection raises
    :class:`UnsafeURL` out of the request call.

    Args:
        allow: networks in CIDR notation that are accepted although not public.
        timeout: the httpx timeout, in seconds, for connect, read, write and pool.

    Raises:
        ValueError: an ``allow`` entry is not valid CIDR.
    """
    return httpx.Client(
        transport=_VettingTransport(_networks(allow)),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )


def post_safely(
    client: httpx.Client,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    allow: Sequence[str] = (),
    max_redirects: int = 3,
) -> httpx.Response:
    """POST ``content`` to ``url``, following 307/308 redirects only after checking them.

    The URL and each redirect target go through :func:`check_url` with ``allow``;
    ``client`` should come from :func:`safe_client` (its own ``allow`` governs the
    connect-time check). A 307/308 is re-sent with the same body and headers, except
    that ``Authorization`` is dropped when the redirect leaves the origin. Other
    responses, 301/302/303 included, are returned as they are: a webhook is not turned
    into a GET.

    Args:
        client: the client to send with, normally from :func:`safe_client`.
        url: the target URL.
        content: the request body.
        headers: the request headers.
        allow: networks in CIDR notation that are accepted although not public.
        max_redirects: how many 307/308 redirects to follow.

    Returns:
        The first response that is not a followed redirect.

    Raises:
        UnsafeURL: the URL, a redirect target or a connected address is refused.
        httpx.TooManyRedirects: more than ``max_redirects`` redirects in a row.
        httpx.HTTPError: the request failed otherwise.
    """
    send_headers = dict(headers)
    redirects = 0
    while True:
        check_url(url, allow=allow)
        response = client.post(url, content=content, headers=send_headers, follow_redirects=False)
        location = response.headers.get("location")
        if response.status_code not in _FOLLOWED_REDIRECTS or location is None:
            return response
        if redirects >= max_redirects:
            raise httpx.TooManyRedirects(
                f"{url}: more than {max_redirects} redirects", request=response.request
            )
        redirects += 1
        try:
            target = response.url.join(location)
        except httpx.InvalidURL as exc:
            raise UnsafeURL(f"{url}: redirect to invalid URL {location!r} ({exc})") from None
        if (target.scheme, target.host, target.port) != (
            response.url.scheme,
            response.url.host,
            response.url.port,
        ):
            send_headers = {k: v for k, v in send_headers.items() if k.lower() != "authorization"}
        url = str(target)
