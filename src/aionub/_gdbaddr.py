"""Where a gdb server listens: ``HOST:PORT`` (TCP) or ``unix:PATH``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("ListenAddress", "parse_listen")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str | None  # None for a Unix socket
    port: int
    path: str | None  # the Unix socket's path

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """``"127.0.0.1:1234"``, ``"localhost:0"``, ``":1234"`` (loopback),
    ``"[::1]:1234"`` or ``"unix:/path/to/socket"``. Raises ValueError
    naming what is wrong."""
    if not isinstance(text, str):
        raise TypeError(f"a listen address must be a str, not {type(text).__name__}")
    if text.startswith("unix:"):
        path = text[5:]
        if not path or "\0" in path:
            raise ValueError(f"listen address {text!r}: unix: needs a socket path")
        return ListenAddress(None, 0, path)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {text!r} is neither HOST:PORT nor unix:PATH")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"listen address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {text!r}: port must be 0 to 65535, got {port}")
    return ListenAddress(host or "127.0.0.1", port, None)
