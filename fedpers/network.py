"""Network addresses shared by devices and the server: SuperLink address checks and free local ports."""

from __future__ import annotations

import ipaddress
import socket


def check_address(address: str) -> str:
    """``address`` if it is ``HOST:PORT`` (IPv6 as ``[ADDR]:PORT``), else ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"SuperLink address {address!r}: expected HOST:PORT, e.g. 192.0.2.10:8000")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(
                f"SuperLink address {address!r}: unbalanced brackets around an IPv6 address"
            )
        ipaddress.IPv6Address(host[1:-1])
    return address


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
