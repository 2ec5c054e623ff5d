"""Shared pytest set-up: tfrecsys is imported first so TensorFlow always loads with Keras 2."""

import socket

import pytest

import tfrecsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any test imports tensorflow)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    return free_port()
