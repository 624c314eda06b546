"""SSRF address guard: only globally routable addresses are fetched.

A URL's host is resolved once, every address it resolves to is checked, and
the connection is made to a checked address (never to the host name again), so
an origin cannot pass the check with a public answer and then connect to a
private one with a second, different DNS answer (DNS rebinding).

Blocked by default (IPv4 and IPv6): loopback, private (RFC 1918, unique-local
``fc00::/7``), link-local, shared/CGNAT ``100.64.0.0/10`` (RFC 6598),
multicast, broadcast, unspecified, reserved, documentation and benchmarking
ranges, site-local ``fec0::/10``, and IPv6 addresses that embed a blocked IPv4
address (IPv4-mapped ``::ffff:0:0/96``, NAT64 ``64:ff9b::/96`` RFC 6052, 6to4
``2002::/16`` RFC 3056). Operators open networks with
``FILEIMPORT_FETCH_ALLOWED_NETWORKS`` and host names with
``FILEIMPORT_FETCH_ALLOWED_HOSTS``.

HTTP clients get the guard from ``create_guarded_session`` (aiohttp): its
connector resolves names only through the guard (``GuardedResolver``) and
creates every socket through ``GuardedSocketFactory``, which checks the
address once more right before the connection is made. The second check is
the one that matters for IP literals: aiohttp connects to those without
asking the resolver.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import aiohttp
import anyio
from aiohttp.abc import AbstractResolver, ResolveResult

from fileimport import USER_AGENT

if TYPE_CHECKING:
    from aiohappyeyeballs import AddrInfoType

    from fileimport.core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``await resolver(host, port)`` → IP address strings, in connection order.

Raises ``HostNotFoundError`` (or ``socket.gaierror``) when the name does not
exist.
"""

ALLOW_HINT = "set FILEIMPORT_FETCH_ALLOWED_NETWORKS to allow it"

# (network, description with its article). Checked most specific first, so
# 255.255.255.255 is "broadcast" and not "reserved".
_V4_RULES: tuple[tuple[str, str], ...] = (
    ("255.255.255.255/32", "a broadcast"),
    ("0.0.0.0/8", "an unspecified"),  # RFC 1122 "this network"
    ("10.0.0.0/8", "a private"),  # RFC 1918
    ("100.64.0.0/10", "a shared (CGNAT)"),  # RFC 6598
    ("127.0.0.0/8", "a loopback"),
    ("169.254.0.0/16", "a link-local"),  # RFC 3927; cloud metadata lives here
    ("172.16.0.0/12", "a private"),
    ("192.0.0.0/24", "a reserved"),  # RFC 6890 IETF protocol assignments
    ("192.0.2.0/24", "a documentation"),  # RFC 5737
    ("192.88.99.0/24", "a reserved"),  # RFC 7526 deprecated 6to4 relay anycast
    ("192.168.0.0/16", "a private"),
    ("198.18.0.0/15", "a benchmarking"),  # RFC 2544
    ("198.51.100.0/24", "a documentation"),
    ("203.0.113.0/24", "a documentation"),
    ("224.0.0.0/4", "a multicast"),
    ("240.0.0.0/4", "a reserved"),
)
_V6_RULES: tuple[tuple[str, str], ...] = (
    ("::/128", "an unspecified"),
    ("::1/128", "a loopback"),
    ("64:ff9b:1::/48", "a private"),  # RFC 8215 local-use NAT64
    ("100::/64", "a reserved"),  # RFC 6666 discard-only
    ("2001::/23", "a reserved"),  # RFC 2928 IETF protocol assignments, incl. Teredo
    ("2001:db8::/32", "a documentation"),  # RFC 3849
    ("3fff::/20", "a documentation"),  # RFC 9637
    ("fc00::/7", "a unique-local"),  # RFC 4193
    ("fe80::/10", "a link-local"),
    ("fec0::/10", "a site-local"),  # RFC 3879, deprecated
    ("ff00::/8", "a multicast"),
    ("::/8", "a reserved"),  # includes deprecated IPv4-compatible ::a.b.c.d
)


def _compile(rules: Iterable[tuple[str, str]]) -> tuple[tuple[IPNetwork, str], ...]:
    compiled = [(ipaddress.ip_network(net), label) for net, label in rules]
    compiled.sort(key=lambda rule: rule[0].prefixlen, reverse=True)
    return tuple(compiled)


_V4_BLOCKED = _compile(_V4_RULES)
_V6_BLOCKED = _compile(_V6_RULES)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # RFC 3056


class BlockedAddressError(Exception):
    """A host resolves to an address the guard does not allow.

    ``host`` is the host name as given (or the IP literal), ``address`` the
    offending IP address, ``kind`` its description ("a private").
    """

    def __init__(self, host: str, address: str, kind: str) -> None:
        self.host = host
        self.address = address
        self.kind = kind
        if host == address:
            message = f"{address} is {kind} address; {ALLOW_HINT}"
        else:
            message = f"{host} resolves to {address}, {kind} address; {ALLOW_HINT}"
        super().__init__(message)


class HostNotFoundError(Exception):
    """DNS has no address for ``host`` (NXDOMAIN or no A/AAAA record)."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(f"{host} does not resolve to any address")


def parse_ip(value: str | IPAddress) -> IPAddress | None:
    """``value`` as an IP address (``[::1]`` brackets and ``%scope`` allowed), or None."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 or 6to4 address stands for."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return None


def classify_address(ip: IPAddress) -> str | None:
    """Why ``ip`` is blocked ("a private", "a loopback", ...), or None if it is global.

    Pure classification; allowed networks are not considered here.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ip if ip.scope_id is None else ipaddress.IPv6Address(ip.compressed.split("%")[0])
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            kind = classify_address(embedded)
            if kind is not None:
                return kind
            if ip.ipv4_mapped is not None or ip in _NAT64:
                # These forward to the IPv4 address (RFC 4291 §2.5.5.2, RFC 6052),
                # whose verdict is the one that counts.
                return None
        rules = _V6_BLOCKED
    else:
        rules = _V4_BLOCKED
    for network, kind in rules:
        if ip in network:
            return kind
    if ip.is_multicast:
        return "a multicast"
    if ip.is_reserved:
        return "a reserved"
    if ip.is_private or not ip.is_global:
        return "a non-global"
    return None


_PERMANENT_DNS_ERRORS = frozenset(
    {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME), socket.EAI_FAIL}
)


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system resolver (``getaddrinfo``, TCP).

    Returns the addresses in the order the system prefers (RFC 6724),
    without duplicates. Raises ``HostNotFoundError`` when the name does not
    exist or has no address; a temporary failure (``EAI_AGAIN``) is raised as
    ``socket.gaierror``.
    """
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in _PERMANENT_DNS_ERRORS:
            raise HostNotFoundError(host) from exc
        raise
    except UnicodeError as exc:  # not a valid IDNA name
        raise HostNotFoundError(host) from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressGuard:
    """Decides which addresses may be connected to.

    ``allowed_networks`` open address ranges (``127.0.0.0/8`` for local
    development); ``allowed_hosts`` are host names (lower case, no trailing
    dot, exact match) whose addresses are not checked at all. With
    ``block_public`` only those networks and hosts are reachable: public
    addresses are refused too (an importer that must only read from the
    operator's own asset servers; also how the test suite keeps every fetch
    on loopback). ``resolver`` replaces DNS, e.g. with a stub in tests.
    """

    def __init__(
        self,
        allowed_networks: Sequence[IPNetwork] = (),
        allowed_hosts: Sequence[str] = (),
        resolver: Resolver | None = None,
        *,
        block_public: bool = False,
    ) -> None:
        self.block_public = block_public
        self.allowed_networks: tuple[IPNetwork, ...] = tuple(allowed_networks)
        self.allowed_hosts: frozenset[str] = frozenset(_normalize_host(h) for h in allowed_hosts)
        self._resolver: Resolver = resolver or system_resolver

    def is_allowed_host(self, host: str) -> bool:
        """Whether ``host`` (any case, trailing dot or ``[]`` allowed) is in ``allowed_hosts``."""
        return _normalize_host(host) in self.allowed_hosts

    def is_allowed_network(self, ip: IPAddress) -> bool:
        """Whether ``ip`` (or the IPv4 address it maps to) is in an allowed network."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.allowed_networks
        )

    def check_address(self, ip: str | IPAddress, host: str | None = None) -> None:
        """Raise ``BlockedAddressError`` unless ``ip`` may be connected to.

        ``host`` names the host for the error message (default: ``ip``).
        Raises ``ValueError`` if ``ip`` is not an IP address.
        """
        address = parse_ip(ip)
        if address is None:
            raise ValueError(f"{ip!r} is not an IP address")
        if self.is_allowed_network(address):
            return
        kind = classify_address(address)
        if kind is None and self.block_public:
            kind = "a public"
        if kind is not None:
            raise BlockedAddressError(host or str(address), str(address), kind)

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``, every one of them checked.

        IP literals (``10.0.0.1``, ``::1``, ``[::1]``) are checked without DNS.
        Returns IP address strings in connection order. Raises
        ``BlockedAddressError`` if ANY address is blocked (a name with one
        private answer is refused outright, so the outcome does not depend on
        which answer a connection happens to use), ``HostNotFoundError`` when
        the name does not resolve, ``socket.gaierror`` on a temporary DNS
        failure. Hosts in ``allowed_hosts`` are resolved but not checked.
        """
        name = _normalize_host(host)
        literal = parse_ip(name)
        if literal is not None:
            if name not in self.allowed_hosts:
                self.check_address(literal, host)
            return [str(literal)]
        try:
            answers = await self._resolver(name, port)
        except socket.gaierror as exc:
            if exc.errno in _PERMANENT_DNS_ERRORS:
                raise HostNotFoundError(host) from exc
            raise
        addresses = list(dict.fromkeys(answers))
        if not addresses:
            raise HostNotFoundError(host)
        if name not in self.allowed_hosts:
            for address in addresses:
                self.check_address(address, host)
        return addresses


def _normalize_host(host: str) -> str:
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name


class _AllowedHostAddress(str):
    """An address of a host in ``allowed_hosts``, as ``GuardedResolver`` returned it.

    aiohttp hands the resolver's address string on unchanged to the socket
    factory (``ResolveResult.host`` becomes ``sockaddr[0]``), so the mark
    travels with that one connection; a URL cannot produce it.
    """

    __slots__ = ()


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that answers only with addresses ``guard`` allows.

    ``resolve`` asks ``AddressGuard.resolve`` and returns its addresses in the
    same order. Raises ``BlockedAddressError`` when any address is blocked and
    ``HostNotFoundError`` when the name has none; aiohttp lets both through
    unchanged, as they are not ``OSError``. A temporary DNS failure
    (``socket.gaierror``) becomes aiohttp's ``ClientConnectorDNSError``.
    Addresses of hosts in ``allowed_hosts`` are marked, so that
    ``GuardedSocketFactory`` lets them through without a check.
    """

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await self._guard.resolve(host, port)
        unchecked = self._guard.is_allowed_host(host)
        results: list[ResolveResult] = []
        for address in addresses:
            address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family not in (socket.AF_UNSPEC, address_family):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=_AllowedHostAddress(address) if unchecked else address,
                    port=port,
                    family=address_family,
                    proto=0,
                    flags=0,
                )
            )
        if not results:
            raise HostNotFoundError(host)
        return results

    async def close(self) -> None:
        return None


class GuardedSocketFactory:
    """aiohttp's ``socket_factory``: checks the address again, then makes the socket.

    Called with a ``getaddrinfo``-style tuple for every connection attempt,
    right before ``connect``. Raises ``BlockedAddressError`` (nothing is
    connected) unless the address passes ``AddressGuard.check_address`` or
    came from ``GuardedResolver`` for a host in ``allowed_hosts``. This is
    the check that IP literals get: aiohttp does not ask the resolver for
    them.
    """

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard

    def __call__(self, addr_info: AddrInfoType) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        address = sockaddr[0]
        if not isinstance(address, _AllowedHostAddress):
            # An IPv6 literal's zone arrives percent-encoded from the URL ("%25eth0").
            text = str(address).replace("%25", "%")
            if parse_ip(text) is None:
                raise BlockedAddressError(text, text, "an unrecognised")
            self._guard.check_address(text)
        return socket.socket(family=family, type=kind, proto=proto)


def create_guarded_connector(
    guard: AddressGuard,
    *,
    ssl_context: ssl.SSLContext | None = None,
    keepalive_seconds: float = 5.0,
) -> aiohttp.TCPConnector:
    """An aiohttp connector whose every TCP connection goes through ``guard``.

    Names resolve through ``GuardedResolver`` for each new connection (no DNS
    cache, so a pooled connection was checked when it was made and a new
    one is checked anew); sockets come from ``GuardedSocketFactory``.
    Addresses are tried one after another in the resolver's order, without
    Happy Eyeballs, so that a refusal by the socket factory surfaces as
    ``BlockedAddressError`` rather than as one of several connect errors.
    The pool is unlimited; idle connections are closed after
    ``keepalive_seconds``. ``ssl_context`` replaces the default TLS
    verification (the system's CA store). Needs a running event loop.
    """
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(guard),
        socket_factory=GuardedSocketFactory(guard),
        use_dns_cache=False,
        happy_eyeballs_delay=None,
        limit=0,
        keepalive_timeout=keepalive_seconds,
        ssl=ssl_context if ssl_context is not None else True,
    )


def create_guarded_session(
    guard: AddressGuard,
    *,
    timeout_seconds: float | None = None,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    headers: Mapping[str, str] | None = None,
    auto_decompress: bool = True,
    read_bufsize: int = 64 * 1024,
    ssl_context: ssl.SSLContext | None = None,
) -> aiohttp.ClientSession:
    """An aiohttp session that connects only where ``guard`` allows (``create_guarded_connector``).

    Timeouts are in seconds, None for none: ``timeout_seconds`` bounds each
    request as a whole, ``connect_timeout`` name resolution plus connecting,
    ``read_timeout`` each wait for data from the peer. ``headers`` are sent
    with every request, after a ``User-Agent`` of this service.
    ``read_bufsize`` (bytes) is how much of a body is buffered before reading
    from the socket pauses. No cookies are stored or sent and environment
    proxies are ignored (a proxy would connect on our behalf, past the
    guard). Close it with ``await session.close()`` or ``async with``. Needs
    a running event loop. A blocked address raises ``BlockedAddressError``
    and an unknown host ``HostNotFoundError`` from the request call.
    """
    return aiohttp.ClientSession(
        connector=create_guarded_connector(guard, ssl_context=ssl_context),
        timeout=aiohttp.ClientTimeout(total=timeout_seconds, connect=connect_timeout, sock_read=read_timeout),
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=auto_decompress,
        read_bufsize=read_bufsize,
    )


def guard_from_settings(settings: Settings, resolver: Resolver | None = None) -> AddressGuard:
    """The guard configured by ``FILEIMPORT_FETCH_ALLOWED_NETWORKS``, ``_HOSTS`` and ``_BLOCK_PUBLIC``."""
    return AddressGuard(
        allowed_networks=settings.fetch_allowed_networks,
        allowed_hosts=settings.fetch_allowed_hosts,
        resolver=resolver,
        block_public=settings.fetch_block_public,
    )
