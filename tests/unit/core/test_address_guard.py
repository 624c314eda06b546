"""The SSRF address guard: which addresses are blocked, and how names resolve.

No I/O: addresses are only classified, never connected to, and host names go
through stub resolvers.
"""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fileimport.core.address_guard import (
    AddressGuard,
    BlockedAddressError,
    GuardedResolver,
    GuardedSocketFactory,
    HostNotFoundError,
    Resolver,
    guard_from_settings,
    system_resolver,
)
from fileimport.core.settings import Settings

BLOCKED = [
    ("127.0.0.1", "a loopback"),
    ("127.255.255.254", "a loopback"),
    ("10.0.0.1", "a private"),
    ("10.255.255.255", "a private"),
    ("172.16.0.1", "a private"),
    ("172.31.255.254", "a private"),
    ("192.168.1.1", "a private"),
    ("169.254.169.254", "a link-local"),
    ("100.64.0.1", "a shared (CGNAT)"),
    ("100.127.255.254", "a shared (CGNAT)"),
    ("0.0.0.0", "an unspecified"),  # noqa: S104 - classified, never bound
    ("0.1.2.3", "an unspecified"),
    ("224.0.0.1", "a multicast"),
    ("239.255.255.250", "a multicast"),
    ("255.255.255.255", "a broadcast"),
    ("240.0.0.1", "a reserved"),
    ("192.0.0.8", "a reserved"),
    ("192.0.2.1", "a documentation"),
    ("198.51.100.7", "a documentation"),
    ("203.0.113.9", "a documentation"),
    ("198.18.0.1", "a benchmarking"),
    ("::1", "a loopback"),
    ("::", "an unspecified"),
    ("fe80::1", "a link-local"),
    ("fe80::1%2", "a link-local"),
    ("fc00::1", "a unique-local"),
    ("fd12:3456:789a::1", "a unique-local"),
    ("fec0::1", "a site-local"),
    ("ff02::1", "a multicast"),
    ("2001:db8::1", "a documentation"),
    ("3fff::1", "a documentation"),
    ("100::1", "a reserved"),
    ("2001::1", "a reserved"),  # Teredo
    ("::a00:1", "a reserved"),  # deprecated IPv4-compatible ::10.0.0.1
    ("::ffff:127.0.0.1", "a loopback"),  # IPv4-mapped
    ("::ffff:10.0.0.1", "a private"),
    ("::ffff:169.254.169.254", "a link-local"),
    ("64:ff9b::a00:1", "a private"),  # NAT64 of 10.0.0.1
    ("64:ff9b::7f00:1", "a loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b:1::1", "a private"),  # local-use NAT64
    ("2002:a00:1::1", "a private"),  # 6to4 of 10.0.0.1
    ("2002:a9fe:a9fe::1", "a link-local"),  # 6to4 of 169.254.169.254
]

# Only classified, never connected to.
PUBLIC = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "2606:2800:220:1:248:1893:25c8:1946",
    "2a00:1450:4001:80b::200e",
    "::ffff:93.184.216.34",  # IPv4-mapped public
    "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
    "2002:5db8:d822::1",  # 6to4 of 93.184.216.34
]

# Independent of the module's own table: every address inside these is blocked.
BLOCKED_NETWORKS = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "::ffff:0.0.0.0/104",
    "::ffff:10.0.0.0/104",
    "::ffff:127.0.0.0/104",
    "::ffff:169.254.0.0/112",
    "::ffff:192.168.0.0/112",
    "64:ff9b::a00:0/104",
    "64:ff9b:1::/48",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
]


def stub_resolver(answers: dict[str, list[str]], calls: list[str] | None = None) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise HostNotFoundError(host)
        return answers[host]

    return resolve


@pytest.mark.parametrize(("address", "kind"), BLOCKED)
def test_non_global_addresses_are_blocked(address: str, kind: str) -> None:
    with pytest.raises(BlockedAddressError) as caught:
        AddressGuard().check_address(address)
    assert caught.value.kind == kind
    assert caught.value.address == str(ipaddress.ip_address(address))
    assert "FILEIMPORT_FETCH_ALLOWED_NETWORKS" in str(caught.value)


@pytest.mark.parametrize("address", PUBLIC)
def test_global_addresses_are_allowed(address: str) -> None:
    AddressGuard().check_address(address)


def test_error_message_names_host_address_and_setting() -> None:
    with pytest.raises(BlockedAddressError) as caught:
        AddressGuard().check_address("10.0.0.1", host="example.com")
    assert str(caught.value) == (
        "example.com resolves to 10.0.0.1, a private address; "
        "set FILEIMPORT_FETCH_ALLOWED_NETWORKS to allow it"
    )
    assert caught.value.host == "example.com"
    assert caught.value.address == "10.0.0.1"


def test_allowed_network_opens_loopback_only() -> None:
    guard = AddressGuard(allowed_networks=[ipaddress.ip_network("127.0.0.0/8")])
    guard.check_address("127.0.0.1")
    guard.check_address("127.3.2.1")
    guard.check_address("::ffff:127.0.0.1")  # the mapped form of an allowed address
    for address in ("10.0.0.1", "::1", "169.254.169.254", "::ffff:10.0.0.1"):
        with pytest.raises(BlockedAddressError):
            guard.check_address(address)


def test_allowed_ipv6_network() -> None:
    guard = AddressGuard(allowed_networks=[ipaddress.ip_network("::1/128")])
    guard.check_address("::1")
    with pytest.raises(BlockedAddressError):
        guard.check_address("127.0.0.1")


def test_check_address_rejects_a_name() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        AddressGuard().check_address("example.com")


async def test_ip_literals_are_checked_without_dns() -> None:
    calls: list[str] = []
    guard = AddressGuard(resolver=stub_resolver({}, calls))
    with pytest.raises(BlockedAddressError):
        await guard.resolve("169.254.169.254", 80)
    with pytest.raises(BlockedAddressError):
        await guard.resolve("[::1]", 80)
    assert await guard.resolve("93.184.216.34", 443) == ["93.184.216.34"]
    assert await guard.resolve("[2606:2800:220:1:248:1893:25c8:1946]", 443) == [
        "2606:2800:220:1:248:1893:25c8:1946"
    ]
    assert calls == []


async def test_name_resolving_to_a_private_address_is_blocked() -> None:
    guard = AddressGuard(resolver=stub_resolver({"internal.example": ["10.0.0.1"]}))
    with pytest.raises(BlockedAddressError) as caught:
        await guard.resolve("internal.example", 80)
    assert caught.value.host == "internal.example"
    assert caught.value.address == "10.0.0.1"
    assert str(caught.value).startswith("internal.example resolves to 10.0.0.1, a private address")


async def test_any_blocked_answer_blocks_the_name() -> None:
    answers = {"mixed.example": ["93.184.216.34", "127.0.0.1"]}
    guard = AddressGuard(resolver=stub_resolver(answers))
    with pytest.raises(BlockedAddressError) as caught:
        await guard.resolve("mixed.example", 80)
    assert caught.value.address == "127.0.0.1"


async def test_public_answers_are_returned_in_order_without_duplicates() -> None:
    answers = {"cdn.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "93.184.216.34"]}
    guard = AddressGuard(resolver=stub_resolver(answers))
    assert await guard.resolve("CDN.example.", 443) == [
        "93.184.216.34",
        "2606:2800:220:1:248:1893:25c8:1946",
    ]


async def test_allowed_host_is_not_checked() -> None:
    answers = {"minio.internal": ["10.1.2.3"], "other.internal": ["10.1.2.4"]}
    guard = AddressGuard(allowed_hosts=["minio.internal"], resolver=stub_resolver(answers))
    assert await guard.resolve("MINIO.internal", 9000) == ["10.1.2.3"]
    with pytest.raises(BlockedAddressError):
        await guard.resolve("other.internal", 9000)


async def test_unknown_host_is_host_not_found() -> None:
    guard = AddressGuard(resolver=stub_resolver({}))
    with pytest.raises(HostNotFoundError) as caught:
        await guard.resolve("nowhere.example", 80)
    assert caught.value.host == "nowhere.example"


async def test_empty_answer_is_host_not_found() -> None:
    guard = AddressGuard(resolver=stub_resolver({"empty.example": []}))
    with pytest.raises(HostNotFoundError):
        await guard.resolve("empty.example", 80)


async def test_system_resolver_maps_nxdomain(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fail(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr("anyio.getaddrinfo", fail)
    with pytest.raises(HostNotFoundError):
        await system_resolver("nowhere.invalid", 80)


async def test_system_resolver_keeps_temporary_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fail(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr("anyio.getaddrinfo", fail)
    with pytest.raises(socket.gaierror):
        await system_resolver("flaky.example", 80)


def test_guard_from_settings() -> None:
    settings = Settings(
        fetch_allowed_networks="127.0.0.0/8, ::1/128",
        fetch_allowed_hosts="Files.Internal.",
    )
    guard = guard_from_settings(settings)
    guard.check_address("127.0.0.1")
    guard.check_address("::1")
    with pytest.raises(BlockedAddressError):
        guard.check_address("10.0.0.1")
    assert guard.allowed_hosts == frozenset({"files.internal"})


def tcp(
    address: str, port: int = 80
) -> tuple[int, int, int, str, tuple[str, int] | tuple[str, int, int, int]]:
    """An address as aiohttp hands it to the socket factory."""
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))


async def test_resolver_answers_the_checked_addresses_in_order() -> None:
    answers = {"files.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]}
    resolver = GuardedResolver(AddressGuard(resolver=stub_resolver(answers)))
    results = await resolver.resolve("files.example", 443, socket.AF_UNSPEC)
    assert [(r["hostname"], r["host"], r["port"], r["family"]) for r in results] == [
        ("files.example", "93.184.216.34", 443, socket.AF_INET),
        ("files.example", "2606:2800:220:1:248:1893:25c8:1946", 443, socket.AF_INET6),
    ]
    only_v6 = await resolver.resolve("files.example", 443, socket.AF_INET6)
    assert [r["host"] for r in only_v6] == ["2606:2800:220:1:248:1893:25c8:1946"]


async def test_resolver_refuses_a_name_with_any_blocked_answer() -> None:
    answers = {"mixed.example": ["93.184.216.34", "10.0.0.7"], "metadata.example": ["169.254.169.254"]}
    resolver = GuardedResolver(AddressGuard(resolver=stub_resolver(answers)))
    with pytest.raises(
        BlockedAddressError, match=re.escape("mixed.example resolves to 10.0.0.7, a private address")
    ):
        await resolver.resolve("mixed.example", 80)
    with pytest.raises(BlockedAddressError):
        await resolver.resolve("metadata.example", 80)
    with pytest.raises(HostNotFoundError):
        await resolver.resolve("nowhere.example", 80)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("10.0.0.1", "10.0.0.1 is a private address"),
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("169.254.169.254", "169.254.169.254 is a link-local address"),
        ("::1", "::1 is a loopback address"),
        ("::ffff:10.0.0.1", "::ffff:a00:1 is a private address"),
        ("fe80::1%25eth0", "fe80::1%eth0 is a link-local address"),
        ("not-an-address", "not-an-address is an unrecognised address"),
    ],
)
def test_socket_factory_refuses_blocked_literals_without_a_socket(
    monkeypatch: pytest.MonkeyPatch, address: str, message: str
) -> None:
    """aiohttp connects to an IP literal without the resolver: the factory is its check."""
    made: list[object] = []
    monkeypatch.setattr(socket, "socket", lambda *args, **kwargs: made.append(args))
    with pytest.raises(BlockedAddressError, match=re.escape(message)):
        GuardedSocketFactory(AddressGuard())(tcp(address))
    assert made == []


def test_socket_factory_makes_a_socket_for_an_allowed_address() -> None:
    guard = AddressGuard(allowed_networks=[ipaddress.ip_network("127.0.0.0/8")])
    with GuardedSocketFactory(guard)(tcp("127.0.0.1")) as sock:
        assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_STREAM)
    with GuardedSocketFactory(guard)(tcp("93.184.216.34")) as sock:
        assert sock.family == socket.AF_INET


async def test_allowed_host_addresses_pass_the_socket_factory_only_as_resolved() -> None:
    guard = AddressGuard(
        allowed_hosts=["files.internal"], resolver=stub_resolver({"files.internal": ["10.0.0.5"]})
    )
    [resolved] = await GuardedResolver(guard).resolve("files.internal", 80, socket.AF_UNSPEC)
    factory = GuardedSocketFactory(guard)
    with factory(tcp(resolved["host"])):
        pass
    # The same address written in a URL is checked like any other.
    with pytest.raises(BlockedAddressError, match=re.escape("10.0.0.5 is a private address")):
        factory(tcp("10.0.0.5"))


@st.composite
def addresses_in(draw: st.DrawFn, networks: list[str]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    network = ipaddress.ip_network(draw(st.sampled_from(networks)))
    offset = draw(st.integers(min_value=0, max_value=network.num_addresses - 1))
    return network[offset]


@given(addresses_in(BLOCKED_NETWORKS))
def test_every_address_in_a_blocked_network_is_blocked(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    with pytest.raises(BlockedAddressError):
        AddressGuard().check_address(address)


@st.composite
def address_pairs_in(
    draw: st.DrawFn, networks: list[str]
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    candidates = [n for n in networks if ipaddress.ip_network(n).num_addresses > 1]
    network = ipaddress.ip_network(draw(st.sampled_from(candidates)))
    offset = draw(st.integers(min_value=0, max_value=network.num_addresses - 1))
    return network[offset], network[offset ^ 1]


@given(address_pairs_in(BLOCKED_NETWORKS))
def test_allowing_one_address_opens_only_that_address(
    pair: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    address, neighbour = pair
    guard = AddressGuard(allowed_networks=[ipaddress.ip_network(address)])
    guard.check_address(address)
    with pytest.raises(BlockedAddressError):
        guard.check_address(neighbour)


@given(st.integers(min_value=0x0800_0000, max_value=0x08FF_FFFF))
def test_public_ipv4_block_is_allowed(value: int) -> None:
    # 8.0.0.0/8 is globally routable unicast space.
    AddressGuard().check_address(ipaddress.IPv4Address(value))


def test_block_public_leaves_only_the_allowed_networks() -> None:
    guard = AddressGuard(allowed_networks=[ipaddress.ip_network("127.0.0.0/8")], block_public=True)
    guard.check_address("127.0.0.1")
    for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "10.0.0.1"):
        with pytest.raises(BlockedAddressError):
            guard.check_address(address)
    assert AddressGuard().check_address("93.184.216.34") is None
