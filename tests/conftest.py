"""Test-wide set-up: everything runs offline.

HF_HUB_OFFLINE is set before any test imports diffusers/transformers, and it is
inherited by the Jupyter kernels nbval starts. A session-wide fixture makes any
attempt to open a non-loopback network connection fail the test that made it.
Each test runs with one torch thread (see ``_one_torch_thread``).
The homework checkers record nothing (``UNETLAB_HOMEWORK_FILE`` empty), here and in the kernels
nbval starts, so that tests never write a results file into the checkout; the tests of the
recording set their own temporary file.
"""
import os
import socket

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["UNETLAB_HOMEWORK_FILE"] = ""

_LOOPBACK = ("127.", "::1", "localhost", "0.0.0.0")


def _is_local(address) -> bool:
    if isinstance(address, (tuple, list)) and address:
        host = str(address[0])
    else:  # AF_UNIX paths and the like
        return True
    return host.startswith(_LOOPBACK)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test, restored afterwards.

    The test models are small: on a 2-core machine that is busy with anything else, two
    OpenMP threads waiting for each other made a tiny forward up to 80x slower, while one
    thread costs the few full-size tests at most a factor of two.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
