"""Shared pytest fixtures for the kodcode test suite."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from scripted_openai import Responder, ScriptedOpenAIServer


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a non-interactive shell (`pytest &`, nohup) inherits SIGINT
    # ignored, and so would every kodcode process it starts: the Ctrl-C tests would then test the shell.
    # A handler set here is reset to the default in each child at exec, as a terminal would have it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


# -- kodcode runs ---------------------------------------------------------------------------------

from pathlib import Path  # noqa: E402

from fake_coder import FakeCoder  # noqa: E402


@pytest.fixture
def fake_coder_server(scripted_server: Callable[..., ScriptedOpenAIServer]) -> Callable[..., tuple[FakeCoder, ScriptedOpenAIServer]]:
    """A factory: fake_coder_server(server={...}, **FakeCoder options) -> (coder, started server)."""

    def start(server: dict[str, Any] | None = None, **coder_options: Any) -> tuple[FakeCoder, ScriptedOpenAIServer]:
        coder = FakeCoder(**coder_options)
        return coder, scripted_server(coder, **(server or {}))

    return start


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


# -- kodcode.view: one scripted run's store shared by test_view.py and test_view_browser.py ------------------

from view_helpers import run_store, view_server  # noqa: E402,F401
