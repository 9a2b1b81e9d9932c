"""The sandbox on a Ray cluster: a real two-node cluster on 127.0.0.1 (a head and a second node process).

One cluster serves the whole session because starting Ray costs seconds on two cores. The test process
is itself a Ray driver (it lists and kills actors); RaySandbox reuses that connection.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from kodcode.sandbox import Limits, RaySandbox, Verdict, bwrap_available, open_sandbox
from kodcode.sandbox.humaneval import humaneval_triplets, plant_bug
from kodcode.sandbox.ray_cluster import ACTOR_PREFIX, _is_loopback

# On the cluster fixture, so the tests that need no cluster run everywhere.
_NO_CLUSTER = ("ray is not installed (pip install -e '.[ray]')" if importlib.util.find_spec("ray") is None
               else None if bwrap_available() else "bubblewrap cannot run here")

_HERE = Path(__file__).parent
_NODE_CPUS = 1                       # per node: two nodes share this machine's two cores
_OBJECT_STORE_BYTES = 80 * 1024 * 1024
_START_TIMEOUT_S = 120.0

GOOD = ("def f(x):\n    return x * 2\n", "from solution import f\n\ndef test_f():\n    assert f(2) == 4\n")
BAD = ("def f(x):\n    return x * 3\n", GOOD[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_node(args: list[str], temp_dir: str, log: Path) -> subprocess.Popen[bytes]:
    """One `ray start --block` in its own process group, returned once that node is up."""
    out = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, str(_HERE / "ray_node.py"), "start", "--block", "--node-ip-address", "127.0.0.1",
         "--num-cpus", str(_NODE_CPUS), "--object-store-memory", str(_OBJECT_STORE_BYTES),
         "--disable-usage-stats", *args],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        # The wrapper keeps the node on loopback; the switch this driver set for that (RaySandbox does)
        # would refuse a node that joins a cluster.
        env={**os.environ, "RAY_TMPDIR": temp_dir, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"})
    deadline = time.monotonic() + _START_TIMEOUT_S
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_nodes([process])
            pytest.fail(f"ray start failed: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    return process


def _stop_nodes(processes: list[subprocess.Popen[bytes]]) -> None:
    """Ends every process of the nodes this fixture started (each node is its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in processes:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)
    for process in processes:
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_temp_dir() -> Iterator[str]:
    if _NO_CLUSTER:
        pytest.skip(_NO_CLUSTER)
    # A short path: Ray's socket paths must fit in 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="kc-ray-")
    yield temp_dir
    subprocess.run(["rm", "-rf", temp_dir], check=False)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory, ray_temp_dir: str) -> Iterator[str]:
    """A head plus a second node on 127.0.0.1, dashboard off; yields the GCS address, connected as a driver."""
    temp_dir = ray_temp_dir
    logs = tmp_path_factory.mktemp("ray")
    address = f"127.0.0.1:{_free_port()}"
    env = pytest.MonkeyPatch()
    # Token auth with a token in the environment, which the nodes, this driver and the drivers started by
    # tests all inherit; a token file some earlier local cluster left in ~/.ray then plays no part.
    env.setenv("RAY_AUTH_MODE", "token")
    env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(_start_node(["--head", "--port", address.rsplit(":", 1)[1], "--include-dashboard=false",
                                      "--temp-dir", temp_dir], temp_dir, logs / "head.log"))
        processes.append(_start_node(["--address", address], temp_dir, logs / "node.log"))
        from kodcode.sandbox.ray_cluster import _import_ray

        ray = _import_ray(address)
        ray.init(address=address, log_to_driver=False, logging_level="warning")
        deadline = time.monotonic() + _START_TIMEOUT_S
        while sum(1 for n in ray.nodes() if n["Alive"]) < 2:
            assert time.monotonic() < deadline, "the second Ray node did not join"
            time.sleep(0.2)
        yield address
        ray.shutdown()
    finally:
        _stop_nodes(processes)
        env.undo()


def _kodcode_actors() -> list[str]:
    import ray

    return sorted(entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
                  if entry["name"].startswith(ACTOR_PREFIX))


def _wait_no_kodcode_actor(timeout_s: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := _kodcode_actors()) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


def _key(verdict: Verdict) -> tuple[Any, ...]:
    # Everything a verdict decides; durations and captured output legitimately differ between runs.
    return verdict.passed, verdict.reason, verdict.tests, verdict.coverage


def test_public_names() -> None:
    from kodcode import sandbox
    from kodcode.sandbox import ray_cluster

    for module in (sandbox, ray_cluster):
        assert sorted(module.__all__) == module.__all__
        assert all(hasattr(module, name) for name in module.__all__)
    assert "RaySandbox" in sandbox.__all__


def test_loopback_addresses_are_recognised() -> None:
    assert _is_loopback(None) and _is_loopback("local") and _is_loopback("127.0.0.1:6379")
    assert _is_loopback("localhost:6379") and _is_loopback("ray://127.0.0.1:10001")
    assert not _is_loopback("10.1.2.3:6379") and not _is_loopback("head.cluster:6379")


async def test_one_actor_per_node_and_ordinary_verdicts(ray_cluster: str) -> None:
    async with open_sandbox(backend="ray", ray_address=ray_cluster) as sb:
        assert isinstance(sb, RaySandbox)
        names = _kodcode_actors()
        good = await sb.run(*GOOD)
        bad = await sb.run(*BAD)
        untraced = await sb.run(*GOOD, Limits(coverage=False))
        nodes = {(await sb.run(*GOOD)).extra["ray_node"] for _ in range(8)}
        workers = sb.workers
    assert len(names) == 2
    assert workers == 2 * (_NODE_CPUS + 1)
    assert good.passed and good.coverage is not None
    assert not bad.passed and bad.reason == "failed: test_f"
    assert untraced.passed and untraced.coverage is None
    # Sequential tasks go to the actor with the most free slots, which alternates between the nodes.
    assert len(nodes) == 2
    assert _wait_no_kodcode_actor() == []


@pytest.mark.slow
async def test_humaneval_verdicts_identical_to_the_local_sandbox(ray_cluster: str) -> None:
    triplets = humaneval_triplets()
    cases = [(t.task_id, buggy, plant_bug(t.solution, t.entry_point) if buggy else t.solution, t.tests)
             for t in triplets for buggy in (False, True)]

    async def run_all(sb: Any) -> dict[tuple[str, bool], Verdict]:
        verdicts: dict[tuple[str, bool], Verdict] = {}

        async def one(task_id: str, buggy: bool, solution: str, tests: str) -> None:
            verdicts[(task_id, buggy)] = await sb.run(solution, tests)

        async with anyio.create_task_group() as tg:
            for case in cases:
                tg.start_soon(one, *case)
        return verdicts

    async with open_sandbox(backend="ray", ray_address=ray_cluster) as sb:
        remote = await run_all(sb)
    async with open_sandbox() as sb:
        local = await run_all(sb)
    assert len(remote) == len(local) == 2 * 164
    # 328 tasks at once on two cores: a slow one (HumanEval/75's canonical loops ~10^6 times under coverage)
    # can hit its time limit on one side only. A time limit depends on load, not on the backend: such a
    # case is run again, alone, on both, and must then agree like every other.
    differing = [k for k in local if _key(remote[k]) != _key(local[k])]
    def timed_out(verdict: Verdict) -> bool:
        text = " ".join([verdict.reason or "", *(t.message for t in verdict.tests)])
        return "timeout" in text or "time limit" in text

    assert all(timed_out(remote[k]) or timed_out(local[k]) for k in differing), \
        [(k, remote[k].reason, local[k].reason) for k in differing]
    by_key = {(case[0], case[1]): case for case in cases}
    for key in differing:
        _, _, solution, tests = by_key[key]
        async with open_sandbox(backend="ray", ray_address=ray_cluster, workers=1) as sb:
            remote[key] = await sb.run(solution, tests)
        async with open_sandbox(workers=1) as sb:
            local[key] = await sb.run(solution, tests)
    assert [k for k in local if _key(remote[k]) != _key(local[k])] == []
    assert [k for k, v in remote.items() if v.passed == k[1]] == []   # canonical pass, planted bugs fail


async def test_killing_a_worker_actor_mid_run_loses_no_task(ray_cluster: str) -> None:
    import ray

    # Each task holds its slot for a moment, so the killed actor has tasks in flight.
    slow = ("import time\n\ndef f(x):\n    time.sleep(0.3)\n    return x * 2\n", GOOD[1])
    slow_bad = (slow[0].replace("x * 2", "x * 3"), GOOD[1])
    results: dict[int, bool] = {}
    async with RaySandbox(address=ray_cluster) as sb:
        victim = _kodcode_actors()[0]

        async def one(index: int) -> None:
            results[index] = (await sb.run(*(slow if index % 2 else slow_bad))).passed

        async with anyio.create_task_group() as tg:
            for index in range(24):
                tg.start_soon(one, index)
            # Every slot is busy while the backlog lasts: wait for a few verdicts, then kill one actor.
            while len(results) < 4:
                await anyio.sleep(0.05)
            ray.kill(ray.get_actor(victim, namespace=ray.get_runtime_context().namespace))
        replaced = _kodcode_actors()
        workers_after = sb.workers
    assert results == {index: bool(index % 2) for index in range(24)}
    assert sb.tasks_lost > 0
    # The node lives, so a replacement actor took the dead one's place.
    assert victim not in replaced and len(replaced) == 2 and workers_after == 2 * (_NODE_CPUS + 1)
    assert _wait_no_kodcode_actor() == []


async def test_a_node_dying_mid_run_loses_no_task(ray_cluster: str, ray_temp_dir: str,
                                                 tmp_path: Path) -> None:
    import ray

    # A third node for this test alone, so the session's two stay up for the others.
    extra = _start_node(["--address", ray_cluster], ray_temp_dir, tmp_path / "extra.log")
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while sum(1 for n in ray.nodes() if n["Alive"]) < 3:
            assert time.monotonic() < deadline, "the third Ray node did not join"
            await anyio.sleep(0.2)
        slow = ("import time\n\ndef f(x):\n    time.sleep(0.3)\n    return x * 2\n", GOOD[1])
        slow_bad = (slow[0].replace("x * 2", "x * 3"), GOOD[1])
        results: dict[int, bool] = {}
        async with RaySandbox(address=ray_cluster) as sb:
            assert sb.workers == 3 * (_NODE_CPUS + 1)

            async def one(index: int) -> None:
                results[index] = (await sb.run(*(slow if index % 2 else slow_bad))).passed

            async with anyio.create_task_group() as tg:
                for index in range(24):
                    tg.start_soon(one, index)
                while len(results) < 4:
                    await anyio.sleep(0.05)
                # The whole node at once: its raylet, object store and the actor's worker process.
                await anyio.to_thread.run_sync(_stop_nodes, [extra])
            workers_after = sb.workers
        assert results == {index: bool(index % 2) for index in range(24)}
        assert sb.tasks_lost > 0
        assert workers_after == 2 * (_NODE_CPUS + 1)   # no replacement on a dead node
    finally:
        _stop_nodes([extra])
    assert _wait_no_kodcode_actor() == []


_DRIVER = """
import sys, anyio
from kodcode.sandbox import RaySandbox

async def main():
    sb = RaySandbox(address=sys.argv[1])
    await sb.start()
    verdict = await sb.run("def f():\\n    return 1\\n", "from solution import f\\n\\ndef test_f():\\n    assert f() == 1\\n")
    print("ready", verdict.passed, flush=True)
    await anyio.sleep(600)

anyio.run(main)
"""


def test_sigkilled_driver_leaves_no_kodcode_actor(ray_cluster: str) -> None:
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, ray_cluster], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert driver.stdout is not None
        # structlog prints to stdout too: skip its lines up to ours.
        lines = (line.split() for line in driver.stdout)
        assert next((words for words in lines if words[:1] == ["ready"]), None) == ["ready", "True"]
        assert len(_kodcode_actors()) == 2
    finally:
        driver.kill()
        driver.wait()
    # The actors were owned by the dead driver's job: Ray ends them without anyone calling aclose.
    assert _wait_no_kodcode_actor() == []


@pytest.mark.slow
def test_pipeline_with_ray_sandbox_verifies_the_same_set(ray_cluster: str, fake_coder_server: Any,
                                                          run_dir: Path) -> None:
    from fake_coder import CATALOGUE

    from helpers import query, run_kodcode

    chosen = CATALOGUE[:6]
    given = run_dir / "given.jsonl"
    given.write_text("".join(json.dumps({"id": f"q{n}", "question": p.question}) + "\n"
                             for n, p in enumerate(chosen)))
    settled: dict[str, list[tuple[str, str]]] = {}
    for backend in ("local", "ray"):
        # A question that is never solved and one whose tests are too weak to kill mutants: both fail.
        _coder, server = fake_coder_server(fail_first={chosen[1].name: 99}, weak_tests={chosen[4].name})
        db = run_dir / f"{backend}.db"
        result = run_kodcode("run", "--base-url", server.base_url, "--given", str(given), "--target", "10",
                             "--max-attempts", "2", "--concurrency", "4", "--db", str(db),
                             "--sandbox", backend, "--ray-address", ray_cluster)
        assert result.returncode == 0, result.stderr
        assert "questions exhausted" in result.stdout
        settled[backend] = query(db, "SELECT question, state FROM items ORDER BY question")
    assert settled["ray"] == settled["local"]
    states = dict(settled["ray"])
    assert states[chosen[1].question] == "failed" and states[chosen[0].question] == "verified"
    assert _wait_no_kodcode_actor() == []
