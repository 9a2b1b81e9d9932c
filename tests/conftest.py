"""Shared pytest fixtures for the kodcode test suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from scripted_openai import Responder, ScriptedOpenAIServer


@pytest.fixture
def scripted_server() -> Iterator[Callable[..., ScriptedOpenAIServer]]:
    """A factory: scripted_server(responder, **options) starts a ScriptedOpenAIServer; all stop at teardown."""
    servers: list[ScriptedOpenAIServer] = []

    def start(responder: Responder, **options: Any) -> ScriptedOpenAIServer:
        server = ScriptedOpenAIServer(responder, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
