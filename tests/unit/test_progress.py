"""The driver's progress record and lines, and `sppo-ray status` reading them (no Ray)."""

from __future__ import annotations

import io
import json
import os
import socket

import pytest

from sppo_ray.cli import main
from sppo_ray.orchestration.progress import PROGRESS, Progress, run_status, status_text
from sppo_ray.orchestration.rundir import RunDir

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _progress(tmp_path, tty=False):
    rd, out, clock = RunDir(str(tmp_path)), io.StringIO(), Clock()
    rd.write_config({"iterations": 2})
    return rd, out, clock, Progress(rd, out=out, clock=clock, tty=tty, heartbeat_s=3600)


def test_a_pipe_gets_a_line_at_the_start_every_tenth_after_30_s_and_at_the_end(tmp_path):
    rd, out, clock, p = _progress(tmp_path)
    p.stage(0, "generate", total=2000)
    for _ in range(100):  # 20 prompts every 3 s: 10% each 30 s
        clock.now += 3
        p.add(20)
    p.end()
    lines = out.getvalue().splitlines()
    assert lines[0] == "round 0 generate: 0/2000 prompts (0%)"
    assert lines[-1] == "round 0 generate: 2000/2000 prompts (100%) in 5m00s"
    assert 10 <= len(lines) <= 12  # start, ~every 10%, end
    assert "6.7 prompts/s, ETA 4m30s" in lines[1]  # 200 done in 30 s, 1800 left
    state = rd.read_json(PROGRESS)
    assert (state["round"], state["stage"], state["done"], state["finished"]) == (0, "generate", 2000, True)


def test_short_stages_print_two_lines_and_stages_without_counts_none(tmp_path):
    rd, out, clock, p = _progress(tmp_path)
    p.stage(0, "judge", total=40)
    for _ in range(4):
        clock.now += 1
        p.add(10)
    p.end()
    p.stage(0, "train")
    clock.now += 100
    p.end()
    assert out.getvalue().splitlines() == ["round 0 judge: 0/40 prompts (0%)",
                                           "round 0 judge: 40/40 prompts (100%) in 4s"]
    assert rd.read_json(PROGRESS)["stage"] == "train"


def test_a_terminal_gets_one_line_redrawn(tmp_path):
    rd, out, clock, p = _progress(tmp_path, tty=True)
    p.stage(1, "generate", total=10, already=4)  # resumed with 4 from chunks: the rate counts only new rows
    clock.now += 2
    p.add(2)
    clock.now += 2
    p.add(4)
    p.end()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.count("\n") == 1  # start, 6/10, 10/10, end: one line, ended once
    assert "6/10 prompts (60%), 1.0 prompts/s, ETA 4s  [##############..........]" in text
    assert text.endswith("10/10 prompts (100%) in 4s\n")  # the finished line keeps no bar


def test_status_of_a_running_a_stopped_and_a_finished_run(tmp_path, capsys):
    rd, out, clock, p = _progress(tmp_path)
    p.stage(0, "generate", total=100)
    clock.now += 10
    p.add(25)
    s = run_status(rd, now=clock.now + 1)
    assert s["state"] == "running" and s["driver"]["alive"] is True  # this process, on this host
    assert s["current"]["done"] == 25 and s["current"]["eta_s"] == pytest.approx(30)
    assert "round 0 generate: 25/100 prompts (25%), 2.5 prompts/s, ETA 30s" in status_text(s)

    p.close("interrupted")
    assert run_status(rd)["state"] == "stopped"
    # a driver on this host that is gone (a SIGKILL leaves no outcome): stopped
    state = rd.read_json(PROGRESS)
    state.pop("outcome")
    state["driver"] = {"pid": 2**22 + 11, "host": socket.gethostname()}
    rd.write_json(PROGRESS, state)
    assert run_status(rd)["state"] == "stopped"
    # a driver elsewhere: its heartbeat's age decides
    state["driver"]["host"] = "another-pod"
    rd.write_json(PROGRESS, state)
    assert run_status(rd, now=state["updated_at"] + 10)["state"] == "running"
    assert run_status(rd, now=state["updated_at"] + 1000)["state"] == "stopped"

    state["outcome"] = "finished"
    rd.write_json(PROGRESS, state)
    assert main(["status", str(tmp_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["state"] == "finished" and printed["iterations"] == 2


def test_status_of_a_run_directory_without_progress(tmp_path):
    rd = RunDir(str(tmp_path))
    rd.write_config({"iterations": 2})
    assert run_status(rd)["state"] == "not started"
    rd.record(0, "generate", outputs={"round_0/responses.parquet": "0" * 64}, seconds=1.0)
    assert run_status(rd)["state"] == "stopped"
    rd.record_round(0, {"round": 0})
    rd.record_round(1, {"round": 1})
    s = run_status(rd)
    assert s["state"] == "finished" and s["last_round"] == {"round": 1}
    assert "last round 1 finished" in status_text(s)


def test_status_names_what_is_not_a_run_directory(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    os.makedirs(tmp_path / "empty")
    assert main(["status", str(tmp_path / "empty")]) == 2
    assert "not a run directory (no config.yaml)" in capsys.readouterr().err


def test_training_counts_steps_from_the_first_report_with_the_last_loss(tmp_path):
    rd, out, clock, p = _progress(tmp_path)
    p.stage(0, "train")
    clock.now += 60  # the workers start, load π_t and DeepSpeed before the first step: not in the rate
    for n in range(1, 41):
        p.count(n, 40, "steps", f"loss {0.7 - n / 100:.4g}")
        clock.now += 2
    p.end()
    lines = out.getvalue().splitlines()
    assert lines[0] == "round 0 train: 1/40 steps (2%), loss 0.69"
    assert "2.0 s per step, ETA" in lines[2] and lines[2].endswith(", loss " + lines[2].rsplit("loss ", 1)[1])
    assert lines[-1] == "round 0 train: 40/40 steps (100%) in 2m20s, loss 0.3"
    assert len(lines) <= 12
    assert run_status(rd, now=clock.now)["current"]["note"] == "loss 0.3"
