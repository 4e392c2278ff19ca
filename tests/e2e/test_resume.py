"""Crash and resume through the real CLI: a generator killed mid-generation, the driver killed mid-judging, the
resume watched in a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time

import pyarrow.parquet as pq
import pytest
from e2e_helpers import CLI, REPO, cli, llm_judge_config

pytestmark = pytest.mark.e2e

COMPARED = ["prompt_id", "prompt", "chosen", "rejected", "chosen_probs", "chosen_probs_win", "chosen_probs_lose",
            "chosen_index", "rejected_index", "policy_version"]


def _kill_generator_once(stop: threading.Event, killed: list[int]) -> None:
    while not stop.is_set():
        out = subprocess.run(["pgrep", "-f", "ray::GeneratorActor.generate"], capture_output=True, text=True).stdout
        if out.split():
            os.kill(int(out.split()[0]), signal.SIGKILL)
            killed.append(int(out.split()[0]))
            return
        time.sleep(0.2)


def _wait_for_chunk(run_dir, key: str, proc: subprocess.Popen, timeout: float = 1500) -> None:
    """Until the stage ``key`` has recorded a chunk of its rows (and has not finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifest = run_dir / "manifest.json"
        if manifest.is_file():
            try:
                m = json.loads(manifest.read_text())
            except json.JSONDecodeError:
                m = {}
            if key in m.get("stages", {}):
                raise AssertionError(f"{key} finished before a chunk of it was seen")
            if m.get("chunks", {}).get(key, {}).get("files"):
                return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {key}: {(run_dir.parent / 'crashed-run.log').read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {key}")


def _in_tmux(command: list[str], env: dict[str, str], root, timeout: float = 1500) -> tuple[int, list[str], str]:
    """Runs ``command`` in a detached tmux session (its own server, so it gets ``env``); returns its exit code, the
    screens seen while it ran (polled with capture-pane) and the whole pane's text at the end."""
    if shutil.which("tmux") is None:
        raise AssertionError("tmux is needed (make test installs it from the distribution's packages)")
    server, rc_file = ["tmux", "-L", f"sppo-test-{os.getpid()}"], root / "tmux.rc"
    rc = shlex.quote(str(rc_file))  # written whole, by rename: never read half-written
    shell = f"cd {shlex.quote(str(REPO))} && {shlex.join(command)}; echo $? > {rc}.tmp && mv {rc}.tmp {rc}; sleep 600"
    subprocess.run([*server, "new-session", "-d", "-s", "run", "-x", "150", "-y", "50", shell], env=env, check=True)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while not rc_file.exists() and time.monotonic() < deadline:
            screen = subprocess.run([*server, "capture-pane", "-p", "-t", "run"], capture_output=True, text=True).stdout
            if not seen or screen != seen[-1]:
                seen.append(screen)
            time.sleep(0.5)
        screen = subprocess.run([*server, "capture-pane", "-p", "-S", "-2000", "-t", "run"], capture_output=True,
                                text=True).stdout
        return (int(rc_file.read_text()) if rc_file.exists() else -1), seen, screen
    finally:
        subprocess.run([*server, "kill-server"], capture_output=True)


def test_resume_after_crash_reproduces_the_uninterrupted_run(submitted_run, bad_prompts, cli_env, tmp_path):
    """The same job as the submitted run (LLM judge): a generator killed mid-generation, then the driver SIGKILLed
    between two chunks of round 1's generation; the resume generates only the prompts no chunk holds and the
    training sets equal the uninterrupted run's."""
    run_dir = tmp_path / "run"
    config = llm_judge_config(tmp_path / "crash.yaml", run_dir, bad_prompts)
    reference = submitted_run["dir"]
    log = (tmp_path / "crashed-run.log").open("w")  # a file, not a pipe: an unread pipe fills up and blocks the run
    proc = subprocess.Popen([*CLI, "run", str(config)], env=cli_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_generator_once, args=(stop, killed))
    killer.start()
    try:
        _wait_for_chunk(run_dir, "round_1/generate", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        stop.set()
        killer.join()
        if proc.poll() is None:
            proc.kill()
    assert killed, "no generator was killed during generation"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "round_0/train" in manifest["stages"] and "round_1/generate" not in manifest["stages"]
    chunked = sum(c["rows"] for c in manifest["chunks"]["round_1/generate"]["files"])
    assert 2 <= chunked < 8
    # every usable prompt exactly once despite the killed generator (the same ones as the uninterrupted run)
    responses = pq.read_table(run_dir / "round_0" / "responses.parquet").column("prompt_id").to_pylist()
    expected = pq.read_table(reference / "round_0" / "responses.parquet").column("prompt_id").to_pylist()
    assert responses == expected and len(responses) == len(set(responses))

    # the resume runs in tmux, a real terminal: its progress is one line redrawn in place, read off the screen
    rc, seen, screen = _in_tmux([*CLI, "resume", str(run_dir)], cli_env, tmp_path)
    assert rc == 0, screen[-3000:]
    # while they run: the line with its bar (the finished line has none)
    assert any(re.search(r"round 1 train: \d+/\d+ steps \(\d+%\).*\[[#.]+\]", s) for s in seen), seen[-3:]
    assert any(re.search(r"round 1 judge: \d+/\d+ prompts.*\[[#.]+\]", s) for s in seen), seen[-3:]
    for stage in ("generate", "judge", "train"):  # redrawn in place: one line a stage on the screen, ended at 100%
        lines = [line for line in screen.splitlines() if re.match(rf"round 1 {stage}: \d+/\d+ ", line)]
        assert len(lines) == 1 and "(100%) in " in lines[0], lines
    assert f"round 1 generate: {chunked} of 8 prompts from the interrupted execution's chunks" in screen
    resumed = json.loads((run_dir / "manifest.json").read_text())
    for key in ("round_0/generate", "round_0/train"):  # finished before the crash: not redone
        assert resumed["stages"][key] == manifest["stages"][key], key
    # round 1's generation took its chunks' rows as they were and generated only the other prompts
    assert resumed["stages"]["round_1/generate"]["from_chunks"] == chunked
    assert "round_1/generate" not in resumed.get("chunks", {})  # cleared once the stage's file is written
    # a round finished before the crash keeps its summary and is not redone (nor its weights re-broadcast)
    assert resumed["rounds"]["0"] == manifest["rounds"]["0"]
    assert {f"round_{t}/{s}" for t in (0, 1) for s in ("generate", "judge", "dataset", "train")} <= set(resumed["stages"])
    for t in (0, 1):
        responses = [pq.read_table(d / f"round_{t}" / "responses.parquet") for d in (run_dir, reference)]
        assert responses[0].equals(responses[1]), t  # byte for byte the uninterrupted run's responses
        ours = pq.read_table(run_dir / f"round_{t}" / "train.parquet").select(COMPARED).to_pylist()
        theirs = pq.read_table(reference / f"round_{t}" / "train.parquet").select(COMPARED).to_pylist()
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            for key in COMPARED:
                if isinstance(a[key], float):
                    assert a[key] == pytest.approx(b[key], abs=1e-6), (t, key)
                else:
                    assert a[key] == b[key], (t, key)


def test_resume_refuses_a_changed_config_naming_the_keys(tiny_run, cli_env):
    proc = cli("resume", str(tiny_run["dir"]), "--set", "training.beta=0.5", "--set", "generation.k=4",
               env=cli_env, check=False)
    assert proc.returncode == 2
    assert "training.beta: 0.05 -> 0.5" in proc.stderr and "generation.k: 3 -> 4" in proc.stderr
