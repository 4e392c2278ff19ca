"""`ray job submit` against a local head with token auth: the job succeeds, the API refuses requests without the
token, and our metrics reach the head's Prometheus endpoint."""

from __future__ import annotations

import json
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

import pytest
from e2e_helpers import LLM_JUDGE, REPO, write_config

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, **kw)


@pytest.fixture()
def token_head():
    """A Ray head on loopback with RAY_AUTH_MODE=token, stopped (only it) at the end."""
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
    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{ports['dash']}"
    while time.monotonic() < deadline:
        if _ray("job", "list", "--address", url, env=env).returncode == 0:
            break
        time.sleep(2)
    else:
        head.terminate()
        pytest.fail("the token-auth Ray head did not come up in 120 s")
    yield {"env": env, "url": url, **ports}
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
            seen.update(n.removeprefix("ray_") for n in names if "sppo_" in n)
        except OSError:
            pass
        stop.wait(3)


def test_job_submit_with_token_auth_and_metrics(token_head, bad_prompts, tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "job.yaml", run_dir, "embedded:default", iterations=1, eval_at_end=False,
        judge=LLM_JUDGE,
        data={"prompts_per_iteration": 8, "eval_prompts": 0},
    )
    # the job API refuses requests without the token
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{token_head['url']}/api/jobs/", timeout=10)
    assert refused.value.code == 401

    seen: set[str] = set()
    stop = threading.Event()
    scraper = threading.Thread(target=_scrape, args=(token_head["metrics"], seen, stop))
    scraper.start()
    try:
        for _ in range(20):  # the head's job agent may come up a little after the dashboard answers
            submitted = _ray("job", "submit", "--address", token_head["url"], "--working-dir", str(REPO),
                             "--runtime-env", str(REPO / "jobs" / "runtime_env.yaml"), "--",
                             "sppo-ray", "run", str(config), env=token_head["env"], timeout=1500)
            if "No available agent" not in submitted.stderr + submitted.stdout:
                break
            time.sleep(5)
        time.sleep(8)  # one more scrape after the last metrics update
    finally:
        stop.set()
        scraper.join()
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in (submitted.stdout + submitted.stderr).lower()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {"round_0/generate", "round_0/judge", "round_0/dataset", "round_0/train"} <= set(manifest["stages"])
    assert (run_dir / "round_0" / "model" / "model.safetensors").is_file()
    expected = {"sppo_round", "sppo_stage", "sppo_generated_tokens_per_s", "sppo_train_loss",
                "sppo_weight_sync_seconds"}
    assert expected <= seen, f"metrics seen on the head's endpoint: {sorted(seen)}"
