"""A real two-node Ray cluster on this machine, isolated in its own network namespace.

The test re-executes this file as a script under ``unshare --net --pid --fork --mount-proc`` (root or
CAP_SYS_ADMIN; skipped, naming the reason, where that is not permitted), brings up ``lo`` and starts
``ray start --head`` on 127.0.0.1 plus a second node (``ray start --address ...``: a separate raylet
with its own CPUs and a ``node_b`` custom resource). All traffic stays on loopback and every Ray
process dies with the namespace. Inside:

1. a local-executor run (the reference output);
2. ``executor: {type: ray, address: <head>}`` with two actors that cannot share a node (2 CPUs each;
   the head has 3, the second node 2): the summary names both node ids, each actor loaded its model
   once, and every output file is byte-identical to the reference;
3. an autoscaling pool (``min_workers: 1, max_workers: 2``) into a fresh output directory; once an
   actor runs on the second node and a result is stored, that node is killed (SIGKILL to its raylet's
   process group): the run still finishes with every image exactly once and the same bytes, and
   ``ray.nodes()`` reports that node dead (the head alive). The summary does not count Ray Data's
   retries; every image stored once with the reference bytes is what shows the lost rows were redone;
4. ``ray stop``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
IMAGES = REPO.parent / "shared" / "images"
NAMES = ["1.jpeg", "2.jpeg", "3.jpeg", "4.jpeg", "5.jpeg", "6.jpeg", "7.jpeg", "8.jpeg"]
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]

STEPS = "  - kind: export.coco\n  - kind: export.png\n"


def test_two_node_cluster(onnx_dir, tmp_path):
    pytest.importorskip("ray", reason="needs ray[data] (pip install 'edgesam-backend[ray]')")
    for tool in ("unshare", "ip", "ray"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}` on PATH (util-linux unshare, iproute2 ip, ray)")
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(
            "unshare --net --pid is not permitted here (needs root or CAP_SYS_ADMIN): "
            + (probe.stderr.strip() or f"exit {probe.returncode}")
        )
    # RAY_AUTH_MODE: without it `ray start` turns token auth on when some ~/.ray/auth_token exists
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [*UNSHARE, sys.executable, str(HERE), str(onnx_dir), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    report = json.loads((tmp_path / "report.json").read_text())
    print(json.dumps(report, indent=1))
    assert report["ok"] is True


# --- inside the namespace --------------------------------------------------------------------------------


def _sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".edgesam" not in p.relative_to(root).parts
    }


def _pipeline(work: Path, onnx: str, name: str, executor: str):
    from edgesam_backend.pipeline.loader import load_pipeline

    d = work / f"{name}-cfg"
    d.mkdir()
    p = d / "pipeline.yaml"
    from helpers import grid_pipeline_yaml  # run as a script: tests/ is on sys.path

    p.write_text(grid_pipeline_yaml(onnx, work / "images", work / name, executor, STEPS))
    return load_pipeline(p)


def _actor_below(root: int) -> bool:
    """Is a SegmentActor worker process a descendant of ``root`` (the second node's ``ray start``)?"""
    parent: dict[int, int] = {}
    actors = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            if b"SegmentActor" in (d / "cmdline").read_bytes():
                actors.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    for pid in actors:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == root:
                return True
            pid, seen = parent.get(pid, 0), seen + 1
    return False


def _ray_left() -> list[str]:
    """Ray daemons still running after ``ray stop`` (waits up to 30 s). This script is PID 1 of the
    namespace, so orphans become its children: they are reaped here and zombies do not count."""
    left: list[str] = []
    for _ in range(60):
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        left = []
        for d in Path("/proc").iterdir():
            try:
                if not d.name.isdigit() or int(d.name) == os.getpid():
                    continue
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
                cmd = (d / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if state != "Z" and (b"raylet" in cmd or b"gcs_server" in cmd):
                left.append(f"{d.name}: {cmd[:120].decode(errors='replace')}")
        if not left:
            break
        time.sleep(0.5)
    return left


def _inside(onnx: str, work: Path) -> None:
    from edgesam_backend.pipeline.runner import run_pipeline

    report: dict = {"ok": False}
    _sh("ip", "link", "set", "lo", "up")
    (work / "images").mkdir()
    for n in NAMES:
        shutil.copy(IMAGES / n, work / "images" / n)
    temp = Path(tempfile.mkdtemp(prefix="esray", dir="/tmp"))  # short: Ray's unix socket paths
    port = 6390
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--num-gpus", "0"]
    node_b_proc = None
    try:
        t = time.perf_counter()
        ref = run_pipeline(_pipeline(work, onnx, "local", "{type: local}"), progress=False)
        report["local_s"] = round(time.perf_counter() - t, 1)
        assert ref["processed"] == len(NAMES)
        reference = _tree(work / "local")

        _sh(
            "ray", "start", "--head", "--port", str(port), "--num-cpus", "3", "--resources", '{"node_a": 1}',
            "--include-dashboard", "false", "--temp-dir", str(temp), *common,
        )  # fmt: skip
        node_b_proc = subprocess.Popen(
            ["ray", "start", "--address", address, "--num-cpus", "2", "--resources", '{"node_b": 1}',
             "--block", *common],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import ray

        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        deadline = time.monotonic() + 120
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(0.5)
        nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        node_a = next(k for k, v in nodes.items() if "node_a" in v)
        node_b = next(k for k, v in nodes.items() if "node_b" in v)
        ray.shutdown()
        report["nodes"] = {"head": node_a, "node_b": node_b}

        # 2. two actors that cannot share a node
        t = time.perf_counter()
        ex = f"{{type: ray, address: '{address}', num_workers: 2, cpus_per_worker: 2}}"
        s = run_pipeline(_pipeline(work, onnx, "ray", ex), progress=False)
        report["ray_s"] = round(time.perf_counter() - t, 1)
        report["ray_summary_nodes"] = s["nodes"]
        assert s["processed"] == len(NAMES) and s["failed"] == 0
        assert set(s["nodes"]) == {node_a, node_b}, s["nodes"]
        assert sum(s["nodes"].values()) == len(NAMES)
        assert len(s["workers"]) == 2 and all(w["model_loads"] == 1 for w in s["workers"].values())
        assert _tree(work / "ray") == reference

        # 3. autoscaling pool; the second node is killed mid-run
        killed = threading.Event()
        saw_actor = threading.Event()

        def killer() -> None:
            results = work / "ray-kill" / ".edgesam" / "results"
            end = time.monotonic() + 300
            while time.monotonic() < end:
                if not saw_actor.is_set() and _actor_below(node_b_proc.pid):
                    saw_actor.set()
                if saw_actor.is_set() and results.is_dir() and any(results.rglob("*.json")):
                    os.killpg(node_b_proc.pid, signal.SIGKILL)
                    killed.set()
                    return
                time.sleep(0.2)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        t = time.perf_counter()
        ex = f"{{type: ray, address: '{address}', min_workers: 1, max_workers: 2, cpus_per_worker: 1}}"
        s2 = run_pipeline(_pipeline(work, onnx, "ray-kill", ex), progress=False)
        report["ray_kill_s"] = round(time.perf_counter() - t, 1)
        th.join(timeout=10)
        report["killed"] = killed.is_set()
        report["kill_summary_nodes"] = s2["nodes"]
        assert saw_actor.is_set(), "no actor was placed on the second node"
        assert killed.is_set(), "the run finished before the second node could be killed"
        stored = list((work / "ray-kill" / ".edgesam" / "results").rglob("*.json"))
        assert s2["processed"] + s2["skipped"] == len(NAMES) and s2["failed"] == 0, s2
        assert len(stored) == len(NAMES)  # none lost, none twice
        assert _tree(work / "ray-kill") == reference
        # the killed node left the cluster (the head's health checks mark it dead), the head did not
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        deadline = time.monotonic() + 120
        while True:
            alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
            if not alive.get(node_b, False) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        ray.shutdown()
        report["alive_after_kill"] = {"head": alive.get(node_a), "node_b": alive.get(node_b)}
        assert alive.get(node_a) is True and not alive.get(node_b, False), alive
        report["ok"] = True
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
        if node_b_proc is not None:
            try:
                os.killpg(node_b_proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        report["left_running"] = _ray_left()
        (work / "report.json").write_text(json.dumps(report))
        shutil.rmtree(temp, ignore_errors=True)
    assert not report["left_running"], report["left_running"]


if __name__ == "__main__":
    _inside(sys.argv[1], Path(sys.argv[2]))
