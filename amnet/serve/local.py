"""`amnet-deploy serve` on this machine: Ray started on 127.0.0.1, the app run, its URL and token printed once.

Everything a user can get wrong is checked before Ray starts (seconds): the host is a loopback address, the port
is free, the model opens on its runtime and is a full model, the threads fit the cores.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass

from amnet.core.errors import InputError
from amnet.core.fileio import lazy_import
from amnet.serve.protocol import is_loopback

SERVE_HINT = "pip install 'amnet-deploy[serve]'"
APP_NAME = "amnet"


@dataclass
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    streams: int = 4  # per replica
    threads: int | None = None  # per replica; default: the cores shared out
    token: str | None = None
    max_session_s: float = 600.0
    runtime: str | None = None
    precision: str | None = None
    verify: bool = True

    def app_args(self) -> dict:
        return {"model": os.path.abspath(self.model), "runtime": self.runtime, "precision": self.precision,
                "streams_per_replica": self.streams, "threads": self.threads, "replicas": self.replicas,
                "max_session_s": self.max_session_s, "verify": self.verify}


def check(opts: ServeOptions) -> ServeOptions:
    """Fill in threads and the token; refuse what would fail later, each as one line."""
    cores = os.cpu_count() or 1
    if not is_loopback(opts.host):
        raise InputError(f"--host {opts.host}: this command serves on a loopback address only; for a cluster "
                         "write a config with --write-config and `serve deploy` it")
    if not 1 <= opts.replicas <= cores:
        raise InputError(f"--replicas must be between 1 and the {cores} cores, got {opts.replicas}")
    threads = opts.threads or max(1, cores // opts.replicas)
    if threads * opts.replicas > cores:
        raise InputError(f"--replicas {opts.replicas} × --threads {threads} is more than the {cores} cores: "
                         "unpinned or oversubscribed runtime threads collapse a server")
    opts.threads = threads
    if not 1 <= opts.streams <= 64:
        raise InputError(f"--streams-per-replica must be between 1 and 64, got {opts.streams}")
    if not 1 <= opts.max_session_s <= 24 * 3600:  # NaN too
        raise InputError(f"--max-session-s must be between 1 and 86400, got {opts.max_session_s}")
    opts.token = opts.token or os.environ.get("AMNET_SERVE_TOKEN") or None
    if opts.token is not None and len(opts.token) < 16:
        raise InputError("the token (--token or AMNET_SERVE_TOKEN) must be at least 16 characters")
    return opts


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise InputError(f"--port {port}: cannot listen on {host} ({e.strerror})") from None


def keep_ray_on_loopback() -> None:
    """Before Ray (or ONNX Runtime) is first imported: all of Ray on 127.0.0.1, no usage report, no telemetry.
    On Linux Ray turns a node address of 127.0.0.1 into the host's own (its GCS, raylet and agents then talk over
    the host's address) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read once when ray is imported; its usage
    report, on by default, posts to Ray's servers. Every process Ray spawns inherits these."""
    import sys

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray asks the GCE metadata server (169.254.169.254) for a TPU type unless GKE's variable names one; a name
    # that is no TPU type answers "none here" without asking.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "none")
    # ONNX Runtime (1.32 on Linux) uploads telemetry to mobile.events.data.microsoft.com some seconds after a
    # session opens (seen with strace: DNS lookups, retried), in this process and in every replica; its switch.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and constants.ENABLE_RAY_CLUSTER:
        raise RuntimeError("ray was imported before amnet.serve could keep it on 127.0.0.1: call "
                           "amnet.serve.local.keep_ray_on_loopback() first")


# Ray's dashboard process asks the cloud metadata servers which cloud it runs on (169.254.169.254 twice, and
# metadata.google.internal through DNS) at every start, usage stats off or not, with no switch of its own
# (ray._common.usage.usage_lib.get_cluster_config_to_report, when ~/ray_bootstrap_config.yaml is absent). Those
# requests go through `requests`, which honours the proxy variables: a proxy on loopback where nothing listens
# fails them at once, on this machine. Ray's own traffic (gRPC, which reads the same variables) is all to
# NO_PROXY, so it goes direct.
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing answers
NO_PROXY = "localhost,127.0.0.1,::1,127.0.0.0/8"
RAY_PROCESS_ENV = {"http_proxy": DEAD_PROXY, "https_proxy": DEAD_PROXY, "no_proxy": NO_PROXY}


@contextlib.contextmanager
def ray_processes_offline():
    """While Ray starts its processes (GCS, raylet, dashboard; the raylet's workers inherit its environment):
    no request of theirs leaves the machine. The caller's own environment is given back afterwards."""
    saved = {k: os.environ.get(k) for k in RAY_PROCESS_ENV}
    os.environ.update(RAY_PROCESS_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start(opts: ServeOptions, quiet: bool = False) -> str:
    """Start Ray and the app; return the base URL. `stop()` undoes it."""
    keep_ray_on_loopback()
    from amnet.serve.model import open_model

    check(opts)
    check_port(opts.host, opts.port)
    lazy_import("ray", SERVE_HINT, "2.40")
    lazy_import("fastapi", SERVE_HINT)
    # The model opens here first, so that a bad file or a missing runtime is one line, not a replica crash loop.
    runner, _, _ = open_model(opts.model, opts.runtime, opts.precision, opts.threads, opts.verify, opts.streams,
                              warm=False)
    runner.close()
    import ray
    from ray import serve

    from amnet.serve.app import build_app

    generated = opts.token is None
    opts.token = opts.token or secrets.token_urlsafe(24)
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if not ray.is_initialized():
        # address="local": a new Ray of our own, never one found on the machine (ray.init() alone joins the
        # latest cluster started here, another user's or a test's, as CI saw it: "When connecting to an existing
        # cluster, num_cpus ... must not be provided").
        with ray_processes_offline():
            ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=os.cpu_count(),
                     include_dashboard=False, log_to_driver=False, configure_logging=not quiet, logging_level="ERROR")
        _give_back_sigterm(on_sigterm)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the driver's "Started Serve ..." lines on stderr
    serve.start(http_options={"host": opts.host, "port": opts.port}, logging_config={"log_level": "WARNING"})
    serve.run(build_app({**opts.app_args(), "token": opts.token}), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{opts.host if ':' not in opts.host else f'[{opts.host}]'}:{opts.port}"
    _wait_healthy(url)
    if not quiet:
        print(f"serving {opts.model} at {url} ({opts.replicas} replica(s) × {opts.streams} streams, "
              f"{opts.threads} thread(s) each)", flush=True)  # whoever reads a pipe learns the URL now
        if generated:
            print(f"token (printed once): {opts.token}", flush=True)
    return url


def _give_back_sigterm(handler) -> None:
    """ray.init takes SIGTERM from its caller: a Python handler that exits 15, then its C++ core worker's failure
    handler, which dumps a stack and aborts (exit 134) with Ray's processes left running. The caller's handler
    (the CLI's: SIGTERM raises Terminated, so serve_forever's cleanup runs) is put back, in C as well."""
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _wait_healthy(url: str, timeout: float = 120.0) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise InputError(f"the app did not answer {url}/healthz within {timeout:.0f} s")
        time.sleep(0.5)


def stop() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def serve_forever(opts: ServeOptions) -> int:
    try:
        start(opts)
        while True:
            time.sleep(3600)
    finally:
        import sys

        ray = sys.modules.get("ray")  # not imported: not installed, or refused before it
        if ray is not None and ray.is_initialized():
            stop()
