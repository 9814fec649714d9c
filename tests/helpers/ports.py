"""Loopback ports for the tests."""

import socket


def free_port() -> int:
    """A port free on 127.0.0.1 now (for a program that cannot be given port 0, or reports 0 when given it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port`: a connection is refused and a new listener can bind it."""
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return False
    except OSError:
        pass
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from closed connections is no listener
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True
