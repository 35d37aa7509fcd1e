"""Test-wide set-up: everything runs offline.

HF_HUB_OFFLINE is set before any test imports diffusers/transformers, and it is
inherited by the Jupyter kernels nbval starts. A session-wide fixture makes any
attempt to open a non-loopback network connection fail the test that made it.
"""
import os
import socket

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

_LOOPBACK = ("127.", "::1", "localhost", "0.0.0.0")


def _is_local(address) -> bool:
    if isinstance(address, (tuple, list)) and address:
        host = str(address[0])
    else:  # AF_UNIX paths and the like
        return True
    return host.startswith(_LOOPBACK)


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach the network."""


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create = socket.create_connection

    def guarded_connect(self, address):
        if not _is_local(address):
            raise NetworkAccessError(f"tests must run offline; tried to connect to {address!r}")
        return real_connect(self, address)

    def guarded_connect_ex(self, address):
        if not _is_local(address):
            raise NetworkAccessError(f"tests must run offline; tried to connect to {address!r}")
        return real_connect_ex(self, address)

    def guarded_create(address, *args, **kwargs):
        if not _is_local(address):
            raise NetworkAccessError(f"tests must run offline; tried to connect to {address!r}")
        return real_create(address, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.create_connection = guarded_create
    yield
    socket.socket.connect = real_connect
    socket.socket.connect_ex = real_connect_ex
    socket.create_connection = real_create
