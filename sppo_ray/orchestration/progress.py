"""Where a run stands, kept current by its driver: ``RUN_DIR/progress.json``, progress lines, `sppo-ray status`.

The driver enters each stage here, and the streamed stages (generation, judging) count their rows as blocks
arrive; training counts optimiser steps as rank 0 reports them (with the last loss). Printed on a terminal as one line redrawn in place; in a pipe or a log as a line when a stage starts,
then at most one per 10% of it and 30 s, and one when it ends. ``progress.json`` is rewritten on each change and
every ``heartbeat_s`` (a driver that stops writing it has stopped).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from typing import IO, Any, Callable

from sppo_ray.orchestration.rundir import RunDir

__all__ = ["PROGRESS", "Progress", "format_seconds", "progress_bar", "progress_line", "run_status", "status_text"]

PROGRESS = "progress.json"
HEARTBEAT_S = 30.0


def format_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_line(p: dict[str, Any]) -> str:
    """``round 0 generate: 400/2000 prompts (20%), 6.1 prompts/s, ETA 4m22s`` (or without counts for a stage
    that reports none)."""
    head = f"round {p['round']} {p['stage']}"
    if p.get("total") is None:
        return f"{head}: running for {format_seconds(p['elapsed_s'])}"
    done, total, unit = p["done"], p["total"], p["unit"]
    pct = 100 * done / total if total else 100.0
    line = f"{head}: {done}/{total} {unit} ({pct:.0f}%)"
    note = f", {p['note']}" if p.get("note") else ""
    if p.get("finished"):
        return f"{line} in {format_seconds(p['elapsed_s'])}{note}"
    if p.get("rate"):
        rate = f"{p['rate']:.1f} {unit}/s" if p["rate"] >= 1 else f"{1 / p['rate']:.1f} s per {unit.rstrip('s')}"
        line += f", {rate}, ETA {format_seconds(p.get('eta_s'))}"
    return line + note


def progress_bar(frac: float, width: int = 24) -> str:
    """``[#########...............]``: ``frac`` of ``width`` cells filled."""
    filled = max(0, min(width, int(frac * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Progress:
    """The driver's progress record and its printed lines."""

    def __init__(self, rd: RunDir, out: IO[str] | None = None, clock: Callable[[], float] = time.time,
                 tty: bool | None = None, heartbeat_s: float = HEARTBEAT_S,
                 on_update: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.rd, self.out, self.clock, self.on_update = rd, out or sys.stdout, clock, on_update
        self.tty = self.out.isatty() if tty is None else tty
        # a redrawn line must fit the terminal's width: a wrapped one is not cleared by the next redraw
        self.columns = shutil.get_terminal_size().columns if self.tty and self.out.isatty() else None
        self.state: dict[str, Any] = {"driver": {"pid": os.getpid(), "host": socket.gethostname()}}
        self._printed_at, self._printed_frac, self._lock = 0.0, 0.0, threading.Lock()
        self._written_at = float("-inf")
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True)
        self._beat.start()

    def stage(self, t: int, stage: str, total: int | None = None, unit: str = "prompts",
              already: int = 0) -> None:
        """Enter a stage; ``total`` items to count (None: a stage without counts), ``already`` of them done."""
        now = self.clock()
        with self._lock:
            self.state.update(round=t, stage=stage, total=total, unit=unit, done=already, counted_from=already,
                              started_at=now, counted_since=now, finished=False, note=None)
            self._printed_frac = already / total if total else 0.0
        self._write(now, force_print=total is not None)

    def add(self, n: int) -> None:
        with self._lock:
            self.state["done"] = self.state.get("done", 0) + n
        self._write(self.clock(), file_every_s=1.0)  # called per block: the file at most once a second

    def count(self, done: int, total: int, unit: str, note: str | None = None) -> None:
        """A stage that learns its size once running (training: optimiser steps, from the workers): ``done`` of
        ``total`` so far. The rate counts from the first count (not from the stage's start-up)."""
        now = self.clock()
        with self._lock:
            first = self.state.get("total") is None
            if first:
                self.state.update(counted_from=done, counted_since=now)
                self._printed_frac = done / total if total else 0.0
            self.state.update(done=done, total=total, unit=unit, note=note)
        self._write(now, force_print=first, file_every_s=1.0)

    def end(self) -> None:
        """The current stage finished."""
        with self._lock:
            self.state["finished"] = True
        self._write(self.clock(), force_print=self.state.get("total") is not None)

    def close(self, outcome: str) -> None:
        """The driver is leaving: ``outcome`` is "finished", "failed" or "interrupted"."""
        self._stop.set()
        with self._lock:
            self.state["outcome"] = outcome
        self._write(self.clock(), print_line=False)

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            self._write(self.clock(), print_line=False)

    def _snapshot(self, now: float) -> dict[str, Any]:
        s = dict(self.state, updated_at=now)
        if "started_at" in s:
            s["elapsed_s"] = now - s["started_at"]
            counted, counting_s = s["done"] - s.get("counted_from", 0), now - s.get("counted_since", s["started_at"])
            s["rate"] = counted / counting_s if counted and counting_s > 0 else None
            left = (s["total"] - s["done"]) if s.get("total") is not None else None
            s["eta_s"] = left / s["rate"] if s["rate"] and left is not None else None
        return s

    def _write(self, now: float, force_print: bool = False, print_line: bool = True, file_every_s: float = 0.0) -> None:
        with self._lock:
            snap = self._snapshot(now)
            if now - self._written_at >= file_every_s:
                try:
                    self.rd.write_json(PROGRESS, snap)
                    self._written_at = now
                except OSError:  # a full or vanished run directory must not stop the run; the stage's output tells
                    pass
            if print_line and "stage" in snap:
                self._print(snap, now, force_print)
                if self.on_update is not None:  # the live metrics
                    try:
                        self.on_update(snap)
                    except Exception as err:  # noqa: BLE001 - metrics must never stop a run: warn once, stop them
                        print(f"progress: live metrics stopped ({type(err).__name__}: {err})", file=sys.stderr)
                        self.on_update = None

    def _print(self, snap: dict[str, Any], now: float, force: bool) -> None:
        if snap.get("total") is None:
            return
        frac = snap["done"] / snap["total"] if snap["total"] else 1.0
        if self.tty:  # redrawn in place, with a bar while the stage runs
            line = progress_line(snap) + ("" if snap.get("finished") else "  " + progress_bar(frac))
            if self.columns:
                line = line[: self.columns - 1]
            self.out.write("\r\033[K" + line + ("\n" if snap.get("finished") else ""))
        elif force or (frac - self._printed_frac >= 0.1 and now - self._printed_at >= 30.0):
            self.out.write(progress_line(snap) + "\n")
        else:
            return
        self.out.flush()
        self._printed_at, self._printed_frac = now, frac


def _driver_alive(driver: dict[str, Any]) -> bool | None:
    """True/False when the driver ran on this host, None when it ran elsewhere (then the heartbeat's age tells)."""
    if driver.get("host") != socket.gethostname():
        return None
    import psutil

    return psutil.pid_exists(driver["pid"])


def run_status(rd: RunDir, now: float | None = None) -> dict[str, Any]:
    """Where the run in ``rd`` stands: state (running, finished, stopped), the stage and its progress, the rounds
    finished and the last one's summary."""
    now = time.time() if now is None else now
    manifest = rd.manifest()
    progress = rd.read_json(PROGRESS) if rd.exists(PROGRESS) else {}
    iterations = rd.read_config().get("iterations") if rd.exists("config.yaml") else None
    rounds = sorted(int(r) for r in manifest["rounds"])
    age = now - progress["updated_at"] if "updated_at" in progress else None
    alive = _driver_alive(progress["driver"]) if "driver" in progress else None
    if progress.get("outcome") == "finished" or (iterations is not None and len(rounds) >= iterations
                                                 and not progress):
        state = "finished"
    elif progress.get("outcome") in ("failed", "interrupted") or alive is False:
        state = "stopped"
    elif alive or (age is not None and age < 3 * HEARTBEAT_S):
        state = "running"
    else:  # no heartbeat: a driver that stopped, or a run directory from before progress.json existed
        state = "stopped" if progress or manifest["stages"] else "not started"
    out = {"run_dir": rd.uri, "state": state, "iterations": iterations, "rounds_finished": rounds,
           "driver": {**progress.get("driver", {}), "alive": alive, "heartbeat_age_s": age}}
    if "stage" in progress:
        out["current"] = {k: progress.get(k) for k in ("round", "stage", "done", "total", "unit", "rate", "eta_s",
                                                      "elapsed_s", "finished", "note")}
    if rounds:
        out["last_round"] = manifest["rounds"][str(rounds[-1])]
    return out


def status_text(s: dict[str, Any]) -> str:
    lines = [f"{s['run_dir']}: {s['state']}, rounds finished {len(s['rounds_finished'])}/{s['iterations'] or '?'}"]
    driver = s["driver"]
    if driver.get("pid"):
        alive = {True: "alive", False: "gone", None: "on another host"}[driver["alive"]]
        beat = f", last heard {format_seconds(driver['heartbeat_age_s'])} ago" if driver["heartbeat_age_s"] else ""
        lines.append(f"  driver pid {driver['pid']} on {driver['host']}: {alive}{beat}")
    if (c := s.get("current")) and s["state"] != "finished":
        lines.append("  " + progress_line(c))
    if (r := s.get("last_round")) is not None:
        sec = r.get("seconds", {})
        lines.append(f"  last round {r['round']}: {r['generated_prompts']} prompts, {r['pairs_judged']} pairs, "
                     f"{r['train_rows']} rows, loss {r['loss_first']:.4g} -> {r['loss_last']:.4g}, "
                     f"win rate chosen {r['win_rate_chosen']:.3f} / rejected {r['win_rate_rejected']:.3f}, "
                     f"{format_seconds(sec.get('round'))}"
                     if r.get("loss_first") is not None else f"  last round {r['round']} finished")
    return "\n".join(lines)
