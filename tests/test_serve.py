"""`amnet-deploy serve` on a real local Ray Serve app (127.0.0.1), and `loadtest` against it.

One app for the module: the small model exported at 32² (batch buckets 1 and 2) on ONNX Runtime, two
sessions per replica. Every client here is a real WebSocket on loopback; every wait is bounded.
"""
import json
import os
import socket
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from amnet.serve.local import RAY_PROCESS_ENV, keep_ray_on_loopback  # before ray is imported: on 127.0.0.1 only

keep_ray_on_loopback()
ray = pytest.importorskip("ray", reason="the serve extra is not installed: pip install 'amnet-deploy[serve]'")
pytest.importorskip("websockets", reason="the serve extra is not installed: pip install 'amnet-deploy[serve]'")
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from amnet.serve import protocol as wire  # noqa: E402
from amnet.serve.metrics import parse  # noqa: E402

TOKEN = "test-token-" + "x" * 16
STREAMS = 3
RATE = 16000  # the demo speech's own rate: the server resamples it
TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(face PNG bytes, 16 kHz s16le speech bytes) from the shipped demo inputs."""
    import soundfile as sf

    from amnet.reenact.demo import write_inputs

    face, speech = write_inputs(tmp_path_factory.mktemp("serve_inputs"), seconds=3.0)
    samples, rate = sf.read(speech, dtype="int16")
    assert rate == RATE
    return face.read_bytes(), samples.astype("<i2").tobytes()


def server_options(small_build, port: int = 0):
    from amnet.serve.local import ServeOptions

    return ServeOptions(str(small_build[0]), port=port, streams=STREAMS, threads=1, token=TOKEN, max_session_s=30)


@pytest.fixture(scope="module")
def server(small_build):
    from amnet.serve.local import start, stop

    url = start(server_options(small_build, free_port()), quiet=True)
    try:
        yield url
    finally:
        stop()


@pytest.fixture
def dial():
    """connect(), closed at the end of the test whatever happens."""
    import contextlib

    with contextlib.ExitStack() as stack:
        yield lambda url: stack.enter_context(connect(url, open_timeout=TIMEOUT, max_size=wire.MAX_FACE_BYTES))


def ws_url(url: str, token: str | None = TOKEN) -> str:
    return url.replace("http://", "ws://") + "/v1/stream" + (f"?token={token}" if token else "")


def open_session(dial, url: str, face: bytes, token: str | None = TOKEN):
    ws = dial(ws_url(url, token))
    ws.send(wire.session_config(RATE))
    ws.send(face)
    ready = json.loads(ws.recv(timeout=TIMEOUT))
    assert ready["type"] == "ready", ready
    return ws, ready


def read_frames(ws, limit: int | None = None) -> tuple[list[dict], list[bytes], dict | None]:
    """Headers and pictures until done (or ``limit`` frames)."""
    headers, pictures = [], []
    while limit is None or len(headers) < limit:
        header = json.loads(ws.recv(timeout=TIMEOUT))
        if header["type"] == "done":
            return headers, pictures, header
        headers.append(header)
        pictures.append(ws.recv(timeout=TIMEOUT))
    return headers, pictures, None


def close_code(ws) -> int:
    """The close code the server sent, after reading whatever was still on its way."""
    with pytest.raises(ConnectionClosed) as e:
        while True:
            ws.recv(timeout=TIMEOUT)
    return e.value.rcvd.code if e.value.rcvd else None


def chunks(pcm: bytes, seconds: float = 0.02):
    step = int(RATE * seconds) * 2
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


def still_served(ws, pcm: bytes) -> None:
    """A session that must be unaffected by another's fault: its speech in, every frame it was due back."""
    for c in chunks(pcm):
        ws.send(c)
    ws.send(wire.END)
    headers, _, done = read_frames(ws)
    assert headers and done["frames"] == len(headers)
    ws.close()


def served(url: str) -> float:
    req = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        values = parse(r.read().decode())
    return sum(v for k, v in values.items() if k.startswith("amnet_frames_served_total"))


def test_frames_come_back_in_order_with_headers(server, inputs, dial):
    import cv2
    from amnet import speech

    face, pcm = inputs
    pcm = pcm[:int(1.5 * RATE) * 2]  # within what a client may send ahead of the clock (AHEAD_S)
    ws, ready = open_session(dial, server, face)
    for c in chunks(pcm):
        ws.send(c)
    ws.send(wire.END)
    headers, pictures, done = read_frames(ws)
    frames = [h["frame"] for h in headers]
    assert frames and frames == sorted(set(frames)), frames
    due = speech.video_frames(len(pcm) // 2 * speech.SAMPLE_RATE // RATE, ready["fps"])
    assert done["frames"] == len(frames) and frames[-1] == done["frames"] + done["dropped"] - 1  # the newest wins
    assert abs(done["frames"] + done["dropped"] - due) <= 1  # the resampler's edge: a sample more or less
    for h in headers:
        assert h["t_audio"] == pytest.approx(h["frame"] / ready["fps"], abs=1e-3) and h["latency_ms"] >= 0
    image = cv2.imdecode(np.frombuffer(pictures[0], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (ready["resolution"], ready["resolution"], 3)
    assert close_code(ws) == wire.NORMAL


def test_wrong_or_missing_token_refused(server, inputs, dial):
    for token in (None, "wrong-token-" + "y" * 16):
        ws = dial(ws_url(server, token))
        assert close_code(ws) == wire.POLICY
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server + "/metrics", timeout=TIMEOUT)
    assert e.value.code == 401
    with urllib.request.urlopen(server + "/healthz", timeout=TIMEOUT) as r:  # health needs no token
        assert json.loads(r.read())["status"] == "ok"


def test_malformed_and_oversized_messages_close_only_their_session(server, inputs, dial):
    face, pcm = inputs
    good, _ = open_session(dial, server, face)
    bad, _ = open_session(dial, server, face)
    bad.send("not the end message")
    assert close_code(bad) == wire.UNSUPPORTED
    big, _ = open_session(dial, server, face)
    big.send(b"\0" * (wire.MAX_PCM_BYTES + 2))
    assert close_code(big) == wire.TOO_BIG
    odd, _ = open_session(dial, server, face)
    odd.send(b"\0" * 3)  # half a sample
    assert close_code(odd) == wire.INVALID
    still_served(good, pcm[:RATE * 2])  # 1 s: the good session still gets frames


def test_a_client_gone_mid_stream_does_not_hurt_the_other(server, inputs, dial):
    face, pcm = inputs
    stays, _ = open_session(dial, server, face)
    leaves, _ = open_session(dial, server, face)
    for c in chunks(pcm[:RATE * 2]):
        leaves.send(c)
    read_frames(leaves, limit=1)
    leaves.close()  # mid-stream, frames still due to it
    still_served(stays, pcm[:int(1.5 * RATE) * 2])


def test_sessions_over_the_limit_get_try_again(server, inputs, dial):
    face, _ = inputs
    held = [open_session(dial, server, face)[0] for _ in range(STREAMS)]
    extra = dial(ws_url(server))
    assert close_code(extra) == wire.TRY_AGAIN
    for ws in held:
        ws.close()


def test_metrics_count_what_was_served(server, inputs, dial):
    face, pcm = inputs
    before = served(server)
    ws, _ = open_session(dial, server, face)
    for c in chunks(pcm[:RATE * 2]):
        ws.send(c)
    ws.send(wire.END)
    headers, _, _ = read_frames(ws)
    ws.close()
    assert served(server) - before == len(headers)


def test_offline_reenact_returns_an_mp4(server, inputs, tmp_path):
    import httpx
    import soundfile as sf

    from amnet.reenact.media import probe

    face, pcm = inputs
    wav = tmp_path / "speech.wav"
    sf.write(wav, np.frombuffer(pcm[:RATE * 2], "<i2"), RATE, subtype="PCM_16")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    files = {"face": ("face.png", face, "image/png"), "audio": ("speech.wav", wav.read_bytes(), "audio/wav")}
    r = httpx.post(server + "/v1/reenact", files=files, headers=auth, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    (tmp_path / "out.mp4").write_bytes(r.content)
    assert len(probe(tmp_path / "out.mp4")["frames"]) == 25  # 1 s at 25 fps
    r = httpx.post(server + "/v1/reenact", files={**files, "face": ("face.png", b"not an image", "image/png")},
                   headers=auth, timeout=TIMEOUT)
    assert r.status_code == 400 and "face" in r.json()["error"]
    assert httpx.post(server + "/v1/reenact", files=files, timeout=TIMEOUT).status_code == 401


def test_loadtest_writes_its_report(server, tmp_path):
    from amnet.cli.main import main

    code = main(["loadtest", server, "--streams", "2", "--seconds", "3", "--token", TOKEN,
                 "--report", str(tmp_path), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "loadtest.json").read_text())
    (run,) = report["runs"]
    assert run["streams"] == 2 and len(run["per_stream"]) == 2
    assert all(s["frames"] > 0 and s["frames"] + s["dropped"] == s["frames_due"] for s in run["per_stream"])
    assert (tmp_path / "loadtest.md").is_file() and (tmp_path / "loadtest.png").stat().st_size > 0


# ---------------------------------------------------------------- a replica SIGKILLed mid-stream

KILL_S = 60  # the whole scenario: scale to two replicas, stream, kill, resume, the stream's end


def scale_to(small_build, replicas: int, timeout: float = KILL_S) -> None:
    """The module's app, with this many replicas running (the same version: Serve only adds or removes)."""
    import time

    from ray import serve

    from amnet.serve.app import build_app
    from amnet.serve.local import APP_NAME

    opts = server_options(small_build)
    serve.run(build_app({**opts.app_args(), "replicas": replicas, "token": TOKEN}), name=APP_NAME, route_prefix="/",
              blocking=False)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        states = serve.status().applications[APP_NAME].deployments["AmnetReplica"].replica_states
        if states == {"RUNNING": replicas}:
            return
        time.sleep(0.5)
    raise AssertionError(f"not {replicas} replicas running within {timeout:.0f} s: {states}")


def replica_pid(replica: str) -> int:
    (pid,) = [a["Pid"] for a in ray._private.state.actors(actor_state_name="ALIVE").values()
              if a["ActorClassName"].startswith("ServeReplica:") and a["Name"].endswith("#" + replica)]
    return pid


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two one-CPU replicas need two CPUs")
def test_a_replica_killed_mid_stream_is_invisible_to_the_client(server, small_build, tmp_path):
    """The WebSocket and the model live in one replica: SIGKILL it mid-stream and the loadtest client reconnects,
    resumes at the next frame (the other replica takes it), and the stream completes with its indices going on."""
    import asyncio
    import signal
    import threading
    import time

    from amnet.reenact import media
    from amnet.reenact.demo import write_inputs
    from benchmarks.loadtest import one_stream, stream_url, to_pcm

    face, speech_file = write_inputs(tmp_path, seconds=8.0)
    pcm = to_pcm(media.decode_audio(speech_file), 8.0)
    scale_to(small_build, 2)
    try:
        result: dict = {}
        replicas: list = []  # the one holding the session, as the stream opens it

        def stream():
            try:
                result.update(asyncio.run(one_stream(stream_url(server), TOKEN, face.read_bytes(), pcm, 25.0, "jpeg",
                                                     time.perf_counter() + KILL_S, replicas)))
            except Exception as e:  # noqa: BLE001 - reported by the test below
                result["error"] = repr(e)

        client = threading.Thread(target=stream, daemon=True)
        client.start()
        end = time.monotonic() + KILL_S / 2
        while not replicas and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(3.0)  # mid-stream: 3 s of the 8
        os.kill(replica_pid(replicas[0]), signal.SIGKILL)
        client.join(KILL_S)
        assert not client.is_alive() and "error" not in result, result  # indices monotonic: one_stream checks
        assert result["reconnects"] >= 1 and result["replicas"][0] != result["replicas"][-1], result
        assert result["dropped"] <= 0.01 * result["frames_due"], json.dumps(result)
    finally:
        scale_to(small_build, 1)


# ---------------------------------------------------------------- before Ray starts: one line, exit 2

def serve_cli(capsys, *argv) -> tuple[int, str]:
    from amnet.cli.main import main

    code = main(["serve", *argv])
    return code, capsys.readouterr().err


def test_serve_refuses_a_missing_model_a_bad_model_a_busy_port_and_a_remote_host(capsys, tmp_path, small_build):
    code, err = serve_cli(capsys, str(tmp_path / "nothing.onnx"))
    assert code == 2 and "model not found" in err and err.count("\n") == 1
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    code, err = serve_cli(capsys, str(bad))
    assert code == 2 and "bad.onnx" in err and err.count("\n") == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, err = serve_cli(capsys, str(small_build[0]), "--port", str(busy.getsockname()[1]))
    assert code == 2 and "--port" in err and err.count("\n") == 1
    code, err = serve_cli(capsys, str(small_build[0]), "--host", "0.0.0.0")
    assert code == 2 and "loopback" in err and err.count("\n") == 1
    assert not ray.is_initialized()


NO_RAY = """
import importlib.abc, sys
class NoRay(importlib.abc.MetaPathFinder):  # as where the serve extra is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoRay())
from amnet.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_without_the_serve_extra_says_what_to_install(small_build):
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", NO_RAY, "serve", str(small_build[0])], cwd=root, capture_output=True,
                         text=True, timeout=TIMEOUT, env={**os.environ, "PYTHONPATH": str(root)})
    assert run.returncode == 2 and "amnet-deploy[serve]" in run.stderr and run.stderr.count("\n") == 1, run.stderr


def test_serve_refuses_a_missing_runtime(capsys, small_build):
    code, err = serve_cli(capsys, str(small_build[0]), "--runtime", "tensorrt")
    assert code == 2 and err.count("\n") == 1


def test_loadtest_refuses_a_remote_host(capsys):
    from amnet.cli.main import main

    assert main(["loadtest", "http://192.0.2.1:8000", "--streams", "1"]) == 2
    err = capsys.readouterr().err
    assert "not a loopback address" in err and err.count("\n") == 1


def test_the_written_config_is_a_serve_deploy_config(tmp_path, small_build, monkeypatch):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from amnet.cli.main import main
    from amnet.serve.app import HEADROOM, build_app

    out = tmp_path / "serve.yaml"
    assert main(["serve", str(small_build[0]), "--replicas", "2", "--streams-per-replica", "3", "--threads", "1",
                 "--write-config", str(out)]) == 0
    config = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    (app,) = config.applications
    (deployment,) = app.deployments
    assert deployment.num_replicas == 2 and deployment.max_ongoing_requests == 3 + HEADROOM
    assert deployment.ray_actor_options.num_cpus == 1
    assert app.args["model"] == str(small_build[0].resolve())
    assert "token" not in app.args  # no secret in the file: the nodes read AMNET_SERVE_TOKEN
    monkeypatch.delenv("AMNET_SERVE_TOKEN", raising=False)
    with pytest.raises(Exception, match="AMNET_SERVE_TOKEN"):
        build_app(app.args)
    monkeypatch.setenv("AMNET_SERVE_TOKEN", TOKEN)
    assert type(build_app(app.args)).__name__ == "Application"


# ---------------------------------------------------------------- one `serve` process: traced, then SIGTERMed

HELD_S = 12  # after it answers: ONNX Runtime's telemetry went out ~8 s after a session opened (strace)


def can_strace() -> bool:
    import shutil
    import subprocess

    return shutil.which("strace") is not None and subprocess.run(
        ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o", os.devnull, "true"],
        capture_output=True).returncode == 0


def name(process) -> str:
    import psutil

    try:
        return process.name()
    except psutil.NoSuchProcess:  # a short-lived one, already gone
        return "(gone)"


@pytest.fixture(scope="module")
def serve_process(small_build, tmp_path_factory):
    """`amnet-deploy serve` in a process of its own, its socket calls traced where strace can (only those: with
    --seccomp-bpf the rest run untraced), held HELD_S after it answered, then SIGTERMed. Returns its exit code,
    stderr, the Ray processes still alive 10 s later, and the trace (None without strace)."""
    import contextlib
    import signal
    import subprocess
    import threading
    import time
    from pathlib import Path

    import psutil

    root = Path(__file__).resolve().parent.parent
    trace = tmp_path_factory.mktemp("serve_trace") / "strace.txt" if can_strace() else None
    tracer = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace)]
    own_env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}  # serve sets its own
    command = [sys.executable, "-m", "amnet.cli", "serve", str(small_build[0]), "--port", str(free_port()),
               "--threads", "1", "--streams-per-replica", "1", "--token", TOKEN]
    launched = subprocess.Popen((tracer if trace else []) + command, cwd=root, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**own_env, "PYTHONPATH": str(root)})
    ray_processes = []
    try:
        serving = threading.Event()  # the URL line is printed once the app answers /healthz
        threading.Thread(target=lambda: launched.stdout.readline().startswith("serving") and serving.set(),
                         daemon=True).start()
        assert serving.wait(180), "serve did not come up within 180 s"
        serve = psutil.Process(launched.pid)
        serve = serve.children()[0] if trace else serve  # strace's child
        ray_processes = serve.children(recursive=True)
        names = [name(p) for p in ray_processes]
        time.sleep(HELD_S)
        serve.send_signal(signal.SIGTERM)
        code = launched.wait(TIMEOUT)  # strace exits with its tracee's status
        _, alive = psutil.wait_procs(ray_processes, timeout=10)
        return {"code": code, "err": launched.stderr.read(), "ray": names, "alive": [name(p) for p in alive],
                "trace": trace.read_text() if trace else None}
    finally:  # a failure here leaves nothing running either (before the fix: SIGABRT, Ray's agents orphaned)
        launched.kill()  # nothing, once it has been waited for
        for p in ray_processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def test_sigterm_stops_serve_with_143_and_leaves_no_ray_process(serve_process):
    assert any("raylet" in name for name in serve_process["ray"]), serve_process["ray"]
    assert serve_process["code"] == 143 and serve_process["err"] == "terminated\n", serve_process
    assert not serve_process["alive"]  # gcs, raylet, its workers: ended, not orphaned


def off_loopback(trace: str) -> list[str]:
    """The socket calls of an strace log that address anything but loopback (a unix socket has no address)."""
    import ipaddress
    import re

    found = []
    for line in trace.splitlines():
        for addr in re.findall(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"', line):
            ip = ipaddress.ip_address(addr[0] or addr[1])
            ip = getattr(ip, "ipv4_mapped", None) or ip
            if not (ip.is_loopback or ip.is_unspecified):
                found.append(line)
    return found


def test_serve_sends_nothing_off_loopback(serve_process):
    """Before: Ray's dashboard asked 169.254.169.254 (and DNS for metadata.google.internal) which cloud it was on,
    and ONNX Runtime looked up mobile.events.data.microsoft.com, at every start, usage stats off or not."""
    if serve_process["trace"] is None:
        pytest.skip("strace is not installed or may not trace here")
    assert "connect(" in serve_process["trace"]  # the trace saw Ray's own (loopback) traffic
    assert off_loopback(serve_process["trace"]) == []


# ---------------------------------------------------------------- a cluster: replicas on two nodes, one lost

CLUSTER_S = 90  # the whole scenario, cluster start to shutdown
RECOVER_S = 30  # a node gone: the longest until a new session gets frames again


def stream_one_second(url: str, face: bytes, pcm: bytes) -> int:
    """Frames a new session gets for 1 s of speech."""
    with connect(ws_url(url), open_timeout=TIMEOUT, max_size=wire.MAX_FACE_BYTES) as ws:
        ws.send(wire.session_config(RATE))
        ws.send(face)
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "ready"
        for c in chunks(pcm[:RATE * 2]):
            ws.send(c)
        ws.send(wire.END)
        _, _, done = read_frames(ws)
        return done["frames"]


def two_nodes_then_one(model: str, face: bytes, pcm: bytes, port: int) -> dict:
    """Run in a process of its own (the module's app holds this one's Ray): two nodes on 127.0.0.1 with a CPU
    each, the app's two one-CPU replicas spread over them, then the worker node removed."""
    import time

    from ray import serve
    from ray.cluster_utils import Cluster
    from websockets.exceptions import WebSocketException

    from amnet.serve.app import build_app
    from amnet.serve.local import APP_NAME

    def replica_nodes() -> list[str]:
        return sorted(a["Address"]["NodeID"] for a in ray._private.state.actors(actor_state_name="ALIVE").values()
                      if a["ActorClassName"].startswith(f"ServeReplica:{APP_NAME}:"))

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": model, "token": TOKEN, "replicas": 2, "threads": 1, "streams_per_replica": 1,
                             "max_session_s": 30}), name=APP_NAME, route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        result = {"nodes": [cluster.head_node.node_id, worker.node_id], "replica_nodes": replica_nodes(),
                  "frames_before": stream_one_second(url, face, pcm)}
        cluster.remove_node(worker)
        lost_at, result["frames_after"] = time.monotonic(), 0
        while not result["frames_after"] and time.monotonic() - lost_at < RECOVER_S:
            try:
                result["frames_after"] = stream_one_second(url, face, pcm)
            except (WebSocketException, OSError):  # routed to the lost replica: the proxy has not seen it go yet
                time.sleep(0.5)
        result["recovered_s"] = time.monotonic() - lost_at
        return result
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


SCENARIO = """
import json, sys
from pathlib import Path
from tests.test_serve import two_nodes_then_one
model, face, pcm, port = sys.argv[1:]
print(json.dumps(two_nodes_then_one(model, Path(face).read_bytes(), Path(pcm).read_bytes(), int(port))))
"""


def test_replicas_spread_over_two_nodes_and_the_app_survives_losing_one(small_build, inputs, tmp_path):
    import subprocess
    from pathlib import Path

    import psutil

    face, pcm = inputs
    (tmp_path / "face.png").write_bytes(face)
    (tmp_path / "speech.pcm").write_bytes(pcm)
    root = Path(__file__).resolve().parent.parent
    # Ray turns a 127.0.0.1 cluster address into the machine's own IP, where nothing here listens, unless
    # told that this is a cluster of one machine (the switch it reads on macOS and Windows).
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0", **RAY_PROCESS_ENV}  # and nothing off loopback (amnet.serve.local)
    scenario = subprocess.Popen([sys.executable, "-c", SCENARIO, str(small_build[0]), str(tmp_path / "face.png"),
                                 str(tmp_path / "speech.pcm"), str(free_port())], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = scenario.communicate(timeout=CLUSTER_S)
    except subprocess.TimeoutExpired:  # the cluster's processes go too, not only their driver
        for p in [*psutil.Process(scenario.pid).children(recursive=True), scenario]:
            p.kill()
        raise
    assert scenario.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["replica_nodes"] == sorted(result["nodes"]), result  # one replica on each node
    assert result["frames_before"] > 0 and result["frames_after"] > 0, result  # after: within RECOVER_S


def test_a_bad_resume_field_is_refused():
    for bad in (-1, "3", True, 1.5, wire.MAX_RESUME + 1):
        with pytest.raises(wire.ProtocolError) as e:
            wire.parse_config(json.dumps({"pcm": {"rate": RATE}, "resume": bad}))
        assert e.value.code == wire.INVALID and "resume" in str(e.value)
    assert wire.parse_config(wire.session_config(RATE, resume=7))["resume"] == 7
