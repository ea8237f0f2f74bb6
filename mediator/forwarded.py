"""Who is on the other end of a request: :func:`client_address`, the one reader of ``X-Forwarded-For``,
believed only from ``CR_TRUSTED_PROXIES``. The rules: ``docs/internals.md`` (Client addresses).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

from .context import SETTINGS

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(request: web.Request) -> str | None:
    settings = request.config_dict.get(SETTINGS)
    return resolve(
        request.remote,
        request.headers.getall("X-Forwarded-For", []),
        settings.trusted_proxies if settings else (),
    )


def resolve(peer: str | None, forwarded_headers: Iterable[str], trusted: tuple[Network, ...]) -> str | None:
    """The client's address from the TCP peer, the ``X-Forwarded-For`` lines and the trusted proxies."""
    here = _ip(peer)
    if here is None or not _trusted(here, trusted):
        return str(here) if here is not None else peer
    hops = [hop.strip() for line in forwarded_headers for hop in line.split(",")]
    for hop in reversed(hops):
        address = _ip(hop)
        if address is None:
            break
        here = address
        if not _trusted(address, trusted):
            break
    return str(here)


def _ip(value: str | None) -> Address | None:
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 (a dual-stack socket) is 10.0.0.1
    return address


def _trusted(address: Address, trusted: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)
