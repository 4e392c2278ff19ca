"""A throwaway Ray head on loopback with token auth, and `ray job submit` against it (used by the e2e fixtures)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from e2e_helpers import REPO

BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, **kw)


@contextlib.contextmanager
def token_head() -> Iterator[dict]:
    """A Ray head with RAY_AUTH_MODE=token on ports of its own; stopped (only it) on exit."""
    # a short temp dir: Ray's unix sockets live below it and socket paths are limited to ~107 characters
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{env['PATH']}"})
    if _ray("get-auth-token", env=env).returncode != 0:
        assert _ray("get-auth-token", "--generate", env=env).returncode == 0
    # every port our own: the session's Ray (ray_cluster) already holds the defaults, e.g. the agent's 52365
    ports = {"gcs": _port(), "dash": _port(), "metrics": _port(), "agent": _port()}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={ports['gcs']}", "--num-cpus=8",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dash']}",
         f"--metrics-export-port={ports['metrics']}", f"--dashboard-agent-listen-port={ports['agent']}",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{ports['dash']}"
        deadline = time.monotonic() + 120
        while _ray("job", "list", "--address", url, env=env).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the token-auth Ray head did not come up in 120 s")
            time.sleep(2)
        yield {"env": env, "url": url, **ports}
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _scrape(port: int, seen: set[str], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            # application metrics appear as ray_<name> (or plain <name> with some exporters)
            names = (line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#"))
            seen.update(n.removeprefix("ray_") for n in names if n)  # ours (sppo_*) and Ray's own
        except OSError:
            pass
        stop.wait(3)


def submit_job(head: dict, config: Path) -> dict:
    """``ray job submit`` of ``sppo-ray run CONFIG`` with the shipped runtime env, while scraping the head's metrics.

    Returns the status code of an unauthenticated job-API request, the submit's exit code and output, and the
    names of our metrics seen on the head's Prometheus endpoint.
    """
    try:
        urllib.request.urlopen(f"{head['url']}/api/jobs/", timeout=10)
        unauthenticated = 200
    except urllib.error.HTTPError as err:
        unauthenticated = err.code
    seen: set[str] = set()
    stop = threading.Event()
    scraper = threading.Thread(target=_scrape, args=(head["metrics"], seen, stop))
    scraper.start()
    try:
        for _ in range(20):  # the head's job agent may come up a little after the dashboard answers
            submitted = _ray("job", "submit", "--address", head["url"], "--working-dir", str(REPO),
                             "--runtime-env", str(REPO / "jobs" / "runtime_env.yaml"), "--",
                             "sppo-ray", "run", str(config), env=head["env"], timeout=1500)
            if "No available agent" not in submitted.stderr + submitted.stdout:
                break
            time.sleep(5)
        time.sleep(8)  # one more scrape after the last metrics update
    finally:
        stop.set()
        scraper.join()
    return {"unauthenticated_status": unauthenticated, "returncode": submitted.returncode,
            "output": submitted.stdout + submitted.stderr, "metrics": seen}
