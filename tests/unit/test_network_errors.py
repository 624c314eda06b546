"""The words a failed file's reason uses for a network error."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from fileimport.core.fetcher import describe_network_error


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (socket.EAI_AGAIN, "Temporary failure in name resolution"),
        (socket.EAI_NONAME, "Name or service not known"),
    ],
)
def test_resolver_errors_without_text_get_the_resolvers_words(code: int, words: str) -> None:
    # getaddrinfo's codes are not errno values: os.strerror(-3) says "Unknown error -3".
    wrapped = aiohttp.ClientConnectionError("Cannot connect to host")
    wrapped.__cause__ = socket.gaierror(code, "")
    assert describe_network_error(wrapped) == words


def test_os_errors_keep_the_operating_systems_words() -> None:
    assert describe_network_error(ConnectionRefusedError(111, "refused")) == "Connection refused"
