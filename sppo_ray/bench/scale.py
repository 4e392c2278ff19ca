"""`sppo-ray bench scale`: one round through the real pipeline at growing prompt counts, beside a bare engine.

Each size gets fresh long-lived actors (their start-up is reported apart) and runs the driver's own ``run_round``
on tiny random models of the config's architectures, so the cost measured is the orchestration's, not a model's.
The generation baseline is a bare vLLM engine (one ``LLM.chat`` call, same prompts, same sampling) measured in
pairs with the generation stage alone, on the round's own generators once the round is done (see PAIRS). Per
size: seconds and seconds per 1,000 prompts of each stage, the pipeline / bare generation throughput, the driver's
(RSS and its own memory) and object store's peaks while the round ran, and the Parquet sizes. The driver's
growth is set beside the Arrow bytes of the round's tables (responses and the judge's tables; the driver holds
only the judge's), and both are extrapolated to the paper's round.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq
import ray

from sppo_ray.config import RunConfig
from sppo_ray.data.prompts import Prompt
from sppo_ray.orchestration.metrics import RunMetrics

__all__ = ["PAIRS", "SCALE_OVERRIDES", "at_equal_step_speed", "bench_scale", "cpu_by_process", "driver_growth_slope",
           "engine_timeline", "generation_pairs", "growth_by_stage", "linearity", "machine_busy_seconds",
           "pair_ratios", "paired_generation", "pairs_table", "paper_round_driver_bytes", "private_rss",
           "process_cpu_seconds", "process_label", "processes_cpu", "scale_prompts", "scale_table", "stage_cpu",
           "stage_windows", "wait_for_quiet"]

# The settings the scale figures are measured at (issue 23): K = 5, short answers, top_p 1.0 (vLLM's top-p over a
# 49k vocabulary costs ~7x the rest of a tiny model's decoding on CPU), the scripted length judge, 1 epoch.
SCALE_OVERRIDES = ["generation.k=5", "generation.max_new_tokens=16", "generation.top_p=1.0",
                   "generation.batch_size=64", "judge.kind=length", "training.epochs=1",
                   "training.global_batch_size=64", "training.micro_batch_size=8", "training.checkpoint_every=0"]
PAPER_PROMPTS, PAPER_RESPONSE_TOKENS = 20_000, 450
STAGES = ("generate", "judge", "dataset", "train", "broadcast")


def scale_prompts(base: list[Prompt], n: int) -> list[Prompt]:
    """``n`` distinct prompts cycled from ``base``: copy c > 0 of a prompt gets id ``<id>~c`` and its last message
    a ``(c)`` prefix, so no two requests share a whole prompt (a prefix cache cannot make copies free)."""
    if not base:
        raise ValueError("scale_prompts: no base prompts")
    out = []
    for i in range(n):
        p, copy = base[i % len(base)], i // len(base)
        if copy == 0:
            out.append(p)
            continue
        *head, last = p.messages
        out.append(replace(p, id=f"{p.id}~{copy}",
                           messages=(*head, {**last, "content": f"({copy}) {last['content']}"})))
    return out


def machine_busy_seconds() -> float:
    """CPU seconds this machine has spent busy since boot, all cores together (everything but idle and I/O wait)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def process_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` of this machine have used; one that is gone counts 0."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def process_label(cmdline: list[str], pid: int, driver_pid: int) -> str:
    """What a process of this machine is, in a word: "driver", a Ray worker's task or actor ("GeneratorActor",
    "IDLE" for an idle worker), a program's name ("raylet", "gcs_server") or a Python script's ("dashboard.py")."""
    if pid == driver_pid:
        return "driver"
    if not cmdline:
        return "?"
    if cmdline[0].startswith("ray::"):  # a Ray worker names itself after what it runs
        return cmdline[0][len("ray::"):].split(".")[0].split()[0] or "ray worker"
    program = cmdline[0].rsplit("/", 1)[-1]
    if program.startswith("python"):
        script = next((a for a in cmdline[1:] if not a.startswith("-")), "")
        return script.rsplit("/", 1)[-1] or program
    return program


def processes_cpu() -> dict[int, tuple[str, float]]:
    """Every process of this machine: pid -> (``process_label``, CPU seconds used so far)."""
    import os

    import psutil

    out = {}
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        try:
            times = proc.info["cpu_times"]
            out[proc.pid] = (process_label(proc.info["cmdline"] or [], proc.pid, os.getpid()),
                             times.user + times.system)
        except (psutil.Error, TypeError, AttributeError):  # gone, or not ours to read
            pass
    return out


def cpu_by_process(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                   top: int = 8) -> list[tuple[str, float]]:
    """CPU seconds used between two :func:`processes_cpu` snapshots, summed per label (a process's label is its
    latest), busiest first; the ``top`` busiest labels, then "others" for the rest; none that used nothing. A
    process started in between counts from 0; one that ended in between is not seen."""
    used: dict[str, float] = {}
    for pid, (label, seconds) in after.items():
        used[label] = used.get(label, 0.0) + max(0.0, seconds - before.get(pid, ("", 0.0))[1])
    ranked = sorted(((label, s) for label, s in used.items() if s > 0), key=lambda kv: -kv[1])
    others = sum(s for _, s in ranked[top:])
    return ranked[:top] + ([("others", others)] if others > 0 else [])


def private_rss() -> int | None:
    """This process's resident bytes that are its own: RSS less the pages it shares with other processes (shared
    libraries' code and other mapped files, which the kernel can drop and read back, and the object store's shared
    memory, which the store's own figure counts). Linux's /proc/self/statm; None where it is missing."""
    import os

    try:
        with open("/proc/self/statm") as f:
            resident, shared = (int(x) for x in f.read().split()[1:3])
    except (OSError, ValueError):
        return None
    return (resident - shared) * os.sysconf("SC_PAGE_SIZE")


class _Peaks:
    """Samples the driver's RSS (and the object store's bytes in use) in a thread while the block runs."""

    def __init__(self, store_bytes: Callable[[], int | None], every_s: float = 0.25) -> None:
        import psutil

        self._proc, self._store, self._every = psutil.Process(), store_bytes, every_s
        self.base_rss = self.peak_rss = 0
        self.peak_store: int | None = None
        self.series: list[tuple[float, int]] = []  # (seconds since the block began, RSS)
        self.base_private: int | None = None
        self.private: list[tuple[float, int]] = []  # (seconds since the block began, private_rss())
        # (seconds since the block began, machine busy CPU s, the engines' processes' CPU s)
        self.cpu: list[tuple[float, float, float]] = []
        self.engine_pids: list[int] = []  # the generators' processes, on this machine (set before the block)
        self.stage_starts: list[tuple[str, float]] = []  # (stage, seconds since the block began), in order
        self.processes: list[dict[int, tuple[str, float]]] = []  # processes_cpu() at each stage's start, and the end
        self._started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last_store = 0.0
        while not self._stop.wait(self._every):
            rss = self._proc.memory_info().rss
            self.peak_rss = max(self.peak_rss, rss)
            now = time.monotonic() - self._started
            self.series.append((now, rss))
            if (own := private_rss()) is not None:
                self.private.append((now, own))
            self.cpu.append((now, machine_busy_seconds(), process_cpu_seconds(self.engine_pids)))
            if time.monotonic() - last_store >= 2.0:  # a raylet round trip: less often
                last_store = time.monotonic()
                used = self._store()
                if used is not None:
                    self.peak_store = max(self.peak_store or 0, used)

    def watching(self, session) -> "_Peaks":
        """This, watching ``session``'s generators' processes too (``pipeline_round``'s ``watch``)."""
        self.engine_pids = [r["pid"] for r in ray.get([a.ready.remote() for a in session.generator_actors])]
        return self

    def stage_started(self, stage: str) -> None:
        if self._started:  # only within the block (round 0)
            self.stage_starts.append((stage, time.monotonic() - self._started))
            self.processes.append(processes_cpu())

    def cpu_by_process(self, stage: str) -> list[tuple[str, float]]:
        """The busiest processes within ``stage`` (its start to the next stage's, or the block's end)."""
        index = [name for name, _ in self.stage_starts].index(stage)
        return cpu_by_process(self.processes[index], self.processes[index + 1])

    def windows(self) -> dict[str, tuple[float, float]]:
        """Each stage's (start, end) in the block, from the moments the driver entered them."""
        return stage_windows(self.stage_starts, self.series[-1][0] if self.series else float("inf"))

    def __enter__(self) -> "_Peaks":
        self.base_rss = self.peak_rss = self._proc.memory_info().rss  # after the actors' start-up
        self.base_private = private_rss()
        self._started = time.monotonic()
        self.cpu.append((0.0, machine_busy_seconds(), process_cpu_seconds(self.engine_pids)))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu.append((time.monotonic() - self._started, machine_busy_seconds(),
                         process_cpu_seconds(self.engine_pids)))
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
        if (own := private_rss()) is not None:
            self.private.append((time.monotonic() - self._started, own))
        if self._started:
            self.processes.append(processes_cpu())
        self._started = 0.0


class _StageClock(RunMetrics):
    """The driver's metrics, also telling the sampler when each stage starts (the stages' true edges)."""

    def __init__(self, run_name: str, peaks: _Peaks) -> None:
        super().__init__(run_name)
        self._peaks = peaks

    def stage(self, round_: int, stage: str) -> None:
        super().stage(round_, stage)
        self._peaks.stage_started(stage)


def _object_store_bytes() -> int | None:
    """Bytes in the cluster's object stores (Ray's `ray memory` figure); None where this Ray cannot say."""
    try:
        from ray._private.internal_api import get_memory_info_reply
        from ray._private.state import state

        return int(get_memory_info_reply(state, timeout_seconds=5).store_stats.object_store_bytes_used)
    except Exception:  # a private API: a figure missing is better than a benchmark lost
        return None


# The generation stage against its engine, in pairs. Once the round is done, on its session: the driver's own
# generation stage alone (into a scratch run directory), and one plain ``LLM.chat`` call on the same generators'
# engines, in their processes, on the same prompts; the two alternate which goes first. These machines drift by up
# to a fifth between two runs minutes apart (BENCHMARKS.md "Scale"), which a bare engine measured only before and
# after the round put all on one side; in pairs it weighs on both alike. The figure is the median pair's ratio.
PAIRS = 3


def wait_for_quiet(busy_below: float = 0.15, within_s: float = 60.0, window_s: float = 1.0) -> float:
    """Wait until the machine's busy CPU over ``window_s`` is under ``busy_below`` of its cores (or ``within_s``
    has passed): the seconds waited."""
    import os

    started = time.monotonic()
    while time.monotonic() - started < within_s:
        busy = machine_busy_seconds()
        time.sleep(window_s)
        if (machine_busy_seconds() - busy) / window_s < busy_below * (os.cpu_count() or 1):
            break
    return time.monotonic() - started


def pair_ratios(pipeline: list[dict[str, Any]], bare: list[dict[str, Any]]) -> dict[str, Any]:
    """Each pair's pipeline / bare tokens per second, in order, and their median (the figure)."""
    if not pipeline or len(pipeline) != len(bare):
        raise ValueError(f"pair_ratios: {len(pipeline)} pipeline runs against {len(bare)} bare ones")
    ratios = [p["tokens_per_s"] / b["tokens_per_s"] for p, b in zip(pipeline, bare)]
    return {"ratios": ratios, "ratio": statistics.median(ratios)}


def engine_timeline(logs: list[tuple[list[tuple[float, float]], float, float]]) -> dict[str, float]:
    """What the engines did during a run, from each one's steps (start, end) and the run's start and end on that
    engine's clock: steps and the seconds spent in them, and the seconds not stepping before the first step,
    between steps and after the last; each per engine (the mean over the engines).

    Not stepping is not idle: between two steps an engine also takes in the requests of a call that arrived (a
    bare ``LLM.chat`` takes in all of its requests before its first step)."""
    if not logs:
        raise ValueError("engine_timeline: no engine")
    out = {"steps": 0.0, "stepping": 0.0, "before_first": 0.0, "between": 0.0, "after_last": 0.0}
    for steps, started, ended in logs:
        if not steps:
            out["before_first"] += ended - started
            continue
        out["steps"] += len(steps)
        out["stepping"] += sum(end - start for start, end in steps)
        out["before_first"] += max(0.0, steps[0][0] - started)
        out["between"] += sum(max(0.0, b[0] - a[1]) for a, b in zip(steps, steps[1:]))
        out["after_last"] += max(0.0, ended - steps[-1][1])
    return {k: v / len(logs) for k, v in out.items()}


def at_equal_step_speed(pipeline: dict[str, Any], bare: dict[str, Any]) -> float:
    """Pipeline / bare tokens per second with the pipeline run's steps taken at the bare run's seconds per step:
    what the pipeline costs around the engine (time not stepping, more or fewer steps), without how fast the
    engine's steps ran in each run. That speed moves by up to a tenth between two bare runs in a row on these
    machines, more than the figure measured; but the driver's and Ray's own CPU on the engine's cores slows steps
    too, and this leaves that out: it is printed beside the plain ratio, not instead of it."""
    p, b = pipeline["engine_timeline"], bare["engine_timeline"]
    per_step = b["stepping"] / b["steps"]
    seconds = pipeline["seconds"] - p["stepping"] + p["steps"] * per_step
    return (pipeline["tokens"] / seconds) / bare["tokens_per_s"]


def _timed(fn: Callable[[], tuple[int, float]], pids: list[int], generators: list[Any] = ()) -> dict[str, Any]:
    """``fn()``'s (tokens, seconds), with the CPU seconds of the processes ``pids``, of the rest of the machine and
    of its busiest processes (``cpu_by_process``), and with ``generators`` what their engines did
    (``engine_timeline``)."""
    from sppo_ray.bench.engines import start_step_log, take_step_log

    started = ray.get([g.__ray_call__.remote(start_step_log) for g in generators])
    processes = processes_cpu()
    busy, own = machine_busy_seconds(), process_cpu_seconds(pids)
    tokens, seconds = fn()
    busy, own = machine_busy_seconds() - busy, process_cpu_seconds(pids) - own
    processes = cpu_by_process(processes, processes_cpu())
    logs = ray.get([g.__ray_call__.remote(take_step_log) for g in generators])
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "cpu_seconds": {"engine": own, "rest": max(0.0, busy - own)}, "cpu_by_process": processes,
            **({"engine_timeline": engine_timeline([(steps, start, end) for (steps, end), start
                                                     in zip(logs, started)])} if generators else {})}


def _stage_alone(config: RunConfig, session, prompts: list[Prompt], scratch: Path) -> tuple[int, float]:
    """The driver's generation stage on ``prompts`` with the policy the generators hold, into a scratch run
    directory (removed after): (tokens, wall seconds, the assembled Parquet included)."""
    from sppo_ray.orchestration.driver import _generate  # the round's own stage, not a copy of it
    from sppo_ray.orchestration.rundir import RunDir

    shutil.rmtree(scratch, ignore_errors=True)
    t, rd = session.generator_version, RunDir(str(scratch))
    started = time.perf_counter()
    _generate(t, prompts, session, rd, config)
    seconds = time.perf_counter() - started
    tokens = rd.done(t, "generate")["generated_tokens"]
    shutil.rmtree(scratch, ignore_errors=True)
    return tokens, seconds


def _bare_on_generators(generators: list[Any], conversations: list[list[dict[str, str]]]) -> tuple[int, float]:
    """One ``LLM.chat`` per generator on its share of ``conversations``, all at once: (tokens, the slowest's s)."""
    from sppo_ray.bench.engines import chat_on_generator

    shares = [conversations[i::len(generators)] for i in range(len(generators))]
    done = ray.get([g.__ray_call__.remote(chat_on_generator, share) for g, share in zip(generators, shares) if share])
    return sum(r["tokens"] for r in done), max(r["seconds"] for r in done)


class _Gate:
    """Stands in for every generator on the stage's forwarding path: each call waits until ``release``, then
    answers with no rows (see ``_bare_beside_idle_stage``)."""

    def __init__(self) -> None:
        import asyncio

        self.opened = asyncio.Event()

    async def generate(self, rows: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        await self.opened.wait()
        return {"rows": []}

    async def release(self) -> None:
        self.opened.set()

    def shutdown(self) -> None: ...


def _bare_beside_idle_stage(config: RunConfig, session, conversations: list[list[dict[str, str]]],
                            prompts: list[Prompt]) -> tuple[int, float]:
    """The bare engine (``_bare_on_generators``) while this process runs the generation stage itself
    (``run_generation_stage``) over the same prompts, with a gate in each generator's place that answers once the
    engine is done: the stage's Ray Data execution, forwarding tasks and broker, but no call into the engine.
    Its ratio to the bare engine alone is what the orchestration's own CPU costs the engine's steps."""
    from sppo_ray.actor_pool import shutdown_pool
    from sppo_ray.generation.stage import run_generation_stage

    gate = ray.remote(_Gate).options(num_cpus=0).remote()
    gates = [gate] * len(session.generator_actors)  # as many slots as generators: the stage's width
    failed: list[BaseException] = []

    def stage() -> None:
        try:
            run_generation_stage(prompts, gates, session.weights, session.generator_version, config.generation,
                                 keep=False)
        except BaseException as err:  # noqa: BLE001 - raised in the caller's thread below
            failed.append(err)

    thread = threading.Thread(target=stage, name="idle-stage")
    thread.start()
    try:
        return _bare_on_generators(session.generator_actors, conversations)
    finally:
        ray.get(gate.release.remote())
        thread.join()
        shutdown_pool(gates)
        if failed:
            raise RuntimeError("bench scale: the idle stage beside the bare engine failed") from failed[0]


def paired_generation(config: RunConfig, session, prompts: list[Prompt], scratch: Path,
                      pairs: int = PAIRS, idle_stage: bool = False) -> dict[str, Any]:
    """``pairs`` pairs of (the generation stage alone, the bare engine) on ``session``'s generators (see PAIRS):
    {"pipeline": [run...], "bare": [run...], "ratios", "ratio"}, a run being ``_timed``'s dict. With
    ``idle_stage`` each pair has a third run, the bare engine beside the stage's Ray Data execution without engine
    calls (``_bare_beside_idle_stage``): "beside_idle_stage" runs, "ratios_beside_idle_stage" (over the pair's bare
    run) and their median "ratio_beside_idle_stage". The runs' order rotates from pair to pair."""
    pids = [r["pid"] for r in ray.get([a.ready.remote() for a in session.generator_actors])]
    conversations = [list(p.messages) for p in prompts]
    wait_for_quiet()  # the ended round's processes (Ray Train's teardown) would weigh on the first pair only
    sides = {"pipeline": lambda: _stage_alone(config, session, prompts, scratch),
             "bare": lambda: _bare_on_generators(session.generator_actors, conversations)}
    if idle_stage:
        sides["beside_idle_stage"] = lambda: _bare_beside_idle_stage(config, session, conversations, prompts)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    order = list(sides)
    for i in range(pairs):
        for side in order[i % len(order):] + order[:i % len(order)]:
            runs[side].append(_timed(sides[side], pids, session.generator_actors))
    result = {**runs, **pair_ratios(runs["pipeline"], runs["bare"]),
              "ratios_at_equal_step_speed": [at_equal_step_speed(p, b) for p, b in zip(runs["pipeline"], runs["bare"])]}
    if idle_stage:
        beside = pair_ratios(runs["beside_idle_stage"], runs["bare"])
        result.update(ratios_beside_idle_stage=beside["ratios"], ratio_beside_idle_stage=beside["ratio"])
    return result


def generation_pairs(config: RunConfig, plan, out: Path, sizes: list[int], pairs: int = PAIRS,
                     keep: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """``bench scale --generation-only``: at each size, on fresh generators and no round, ``pairs`` pairs of the
    generation stage alone and the bare engine (``paired_generation``), after one stage of up to 200 prompts that
    pays the session's first-execution costs. Minutes where the whole bench takes tens of them, so more pairs fit:
    the figure to look at when only the generation path changed. Each pair also runs the bare engine beside the
    stage's Ray Data execution without engine calls (``paired_generation``'s ``idle_stage``)."""
    from sppo_ray.orchestration.session import Session

    if pairs < 1:
        raise ValueError(f"bench scale: pairs must be at least 1, got {pairs}")
    base = [p for round_prompts in plan.rounds for p in round_prompts]
    result: dict[str, Any] = {"generation_only": True, "k": config.generation.k,
                              "max_new_tokens": config.generation.max_new_tokens, "top_p": config.generation.top_p,
                              "generators": config.resources.generators, "sizes": {}}
    for n in sorted(sizes):
        prompts = scale_prompts(base, n)
        session = Session.start(config, plan.policy_path, plan.judge_path)
        try:
            _stage_alone(config, session, prompts[:200], out / f"scale_{n}_warm")
            paired = paired_generation(config, session, prompts, out / f"scale_{n}_pair", pairs, idle_stage=True)
        finally:
            session.shutdown()
        result["sizes"][str(n)] = {"prompts": n, "ratio_pipeline_over_bare_generation": paired["ratio"],
                                   "bare_generation": paired}
        if keep is not None:
            keep(result)
    return result


def pairs_table(result: dict[str, Any]) -> str:
    """What ``bench scale --generation-only`` prints: per size the pairs' ratios, at the bare run's step speed too,
    the mean wall and rest-of-machine CPU seconds of each side, and the processes that CPU went to."""
    head = ("| prompts | pipeline/bare gen, each pair | median | at the bare run's step speed (median) | wall s "
            "stage / bare (means) | rest of the machine CPU s stage / bare (means) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key in sorted(result["sizes"], key=int):
        paired = result["sizes"][key]["bare_generation"]
        mean = {side: _means(paired[side]) for side in ("pipeline", "bare")}
        equal = paired["ratios_at_equal_step_speed"]
        lines.append(f"| {int(key):,} | " + ", ".join(f"{r:.2f}" for r in paired["ratios"]) +
                     f" | {paired['ratio']:.2f} | " + ", ".join(f"{r:.2f}" for r in equal) +
                     f" ({statistics.median(equal):.2f}) | {mean['pipeline']['seconds']:.1f} / "
                     f"{mean['bare']['seconds']:.1f} | {mean['pipeline']['rest']:.1f} / {mean['bare']['rest']:.1f} |")
    lines.append("")
    for key in sorted(result["sizes"], key=int):
        paired = result["sizes"][key]["bare_generation"]
        if "ratios_beside_idle_stage" in paired:
            beside, bare = _means(paired["beside_idle_stage"]), _means(paired["bare"])
            lines.append(f"the bare engine beside the stage's Ray Data execution without engine calls / alone at "
                         f"{int(key):,} prompts, each pair: " +
                         ", ".join(f"{r:.2f}" for r in paired["ratios_beside_idle_stage"]) +
                         f" (median {paired['ratio_beside_idle_stage']:.2f}); wall s {beside['seconds']:.1f} / "
                         f"{bare['seconds']:.1f}, rest of the machine CPU s {beside['rest']:.1f} / {bare['rest']:.1f} "
                         "(means)")
    for key in sorted(result["sizes"], key=int):
        paired = result["sizes"][key]["bare_generation"]
        per = {side: _mean_by_process(paired[side]) for side in ("pipeline", "bare")}
        labels = sorted({label for side in per.values() for label, seconds in side.items() if seconds >= 0.05},
                        key=lambda label: (-(per["pipeline"].get(label, 0.0) + per["bare"].get(label, 0.0)), label))
        lines.append(f"CPU s by process at {int(key):,} prompts, the stage alone / the bare engine (means): " +
                     ", ".join(f"{label} {per['pipeline'].get(label, 0.0):.1f}/{per['bare'].get(label, 0.0):.1f}"
                               for label in labels))
    return "\n".join(lines)


def _mean_by_process(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each process label's mean CPU seconds over ``_timed`` runs (0 in a run where it was not among the busiest)."""
    totals: dict[str, float] = {}
    for run in runs:
        for label, seconds in run["cpu_by_process"]:
            totals[label] = totals.get(label, 0.0) + seconds
    return {label: seconds / len(runs) for label, seconds in totals.items()}


def _settled_rss() -> int:
    """The driver's RSS once freed memory is handed back (what the driver itself does when a stage ends)."""
    import gc

    import psutil

    from sppo_ray.orchestration.driver import return_freed_memory

    gc.collect()
    return_freed_memory()
    return psutil.Process().memory_info().rss


def _pipeline_round(config: RunConfig, plan, prompts: list[Prompt], run_dir: Path, rounds: int = 1,
                    after: Callable[[Any], None] | None = None) -> dict[str, Any]:
    from sppo_ray.bench.round import pipeline_round

    peaks, starts = _Peaks(_object_store_bytes), []
    rd, startup = pipeline_round(config, plan, prompts, run_dir, watch=peaks.watching, rounds=rounds,
                                 on_round_start=lambda t: starts.append(_settled_rss()),
                                 metrics=_StageClock(f"{config.name}-bench", peaks), after=after)
    summary, windows = rd.manifest()["rounds"]["0"], peaks.windows()
    files = {name: (run_dir / "round_0" / f"{name}.parquet") for name in ("responses", "tables", "train")}
    # the round's tables as Arrow, the yardstick of the driver's growth (it holds only the judge's: "tables")
    arrow = {name: pq.read_table(files[name]).nbytes for name in ("responses", "tables")}
    return {"actor_startup_seconds": startup, "seconds": summary["seconds"],
            "generated_tokens": summary["generated_tokens"], "train_rows": summary["train_rows"],
            "mean_response_tokens": summary["mean_response_tokens"],
            "driver_rss_before": peaks.base_rss, "driver_rss_peak": peaks.peak_rss,
            "driver_growth": peaks.peak_rss - peaks.base_rss,
            "driver_growth_by_stage": growth_by_stage(peaks.series, peaks.base_rss, windows),
            **({"driver_private_growth": max(b for _, b in peaks.private) - peaks.base_private,
                "driver_private_growth_by_stage": growth_by_stage(peaks.private, peaks.base_private, windows)}
               if peaks.private and peaks.base_private is not None else {}),
            "generate_cpu_seconds": stage_cpu(peaks.cpu, windows, "generate"),
            "generate_cpu_by_process": peaks.cpu_by_process("generate"),
            "object_store_peak": peaks.peak_store, "driver_rss_at_round_starts": starts,
            "arrow_bytes": arrow, "arrow_bytes_held": sum(arrow.values()),
            "parquet_bytes": {name: f.stat().st_size for name, f in files.items()}}


def growth_by_stage(series: list[tuple[float, int]], base: int,
                    windows: dict[str, tuple[float, float]]) -> dict[str, int]:
    """The driver's peak RSS over ``base`` within each stage's (start, end) window (``stage_windows``). A stage
    starts at the last level sampled before it, so one shorter than the sampling interval is not 0."""
    out = {}
    for stage, (start, end) in windows.items():
        before = [rss for t, rss in series if t < start][-1:] or [base]
        out[stage] = max(before + [rss for t, rss in series if start <= t < end]) - base
    return out


def stage_windows(starts: list[tuple[str, float]], end: float) -> dict[str, tuple[float, float]]:
    """Each stage's (start, end) from the moments the driver entered the stages (``starts``, in order): a stage
    runs to the next one's start, the last to ``end``; what the driver does between stages falls to the earlier."""
    edges = [t for _, t in starts[1:]] + [end]
    return {stage: (t, edge) for (stage, t), edge in zip(starts, edges)}


def stage_cpu(samples: list[tuple[float, float, float]], windows: dict[str, tuple[float, float]],
              stage: str) -> dict[str, float]:
    """CPU seconds used within ``stage``'s window from (t, machine busy, engines) samples: {"engine", "rest"},
    "rest" being every other process of the machine (the driver, Ray's own processes, the forwarders, idle actors).
    The stage's edges fall to the last sample at or before each; with no sample inside it both are 0."""
    if stage not in windows:
        raise ValueError(f"no stage {stage!r}")
    start, end = windows[stage]

    def at(t: float) -> tuple[float, float]:
        before = [(busy, engine) for when, busy, engine in samples if when <= t]
        return before[-1] if before else samples[0][1:]

    (b0, e0), (b1, e1) = at(start), at(end)
    return {"engine": e1 - e0, "rest": max(0.0, (b1 - b0) - (e1 - e0))}


def bench_scale(config: RunConfig, plan, out: Path, sizes: list[int],
                keep: Callable[[dict[str, Any]], None] | None = None,
                paper_shape: tuple[int, int] = (PAPER_PROMPTS, PAPER_RESPONSE_TOKENS),
                rounds: int = 1, pairs: int = PAIRS) -> dict[str, Any]:
    """One round at each size (smallest first), then on its session ``pairs`` pairs of the generation stage alone
    and the bare engine (see PAIRS); then the dataset stage alone on synthetic tables of ``paper_shape`` (prompts,
    response tokens) at the config's K. ``rounds`` > 1 runs that many rounds per size in one session (the figures
    are round 0's; the driver's RSS is recorded at each round's start)."""
    from sppo_ray.bench.paper_round import measure_dataset_stage

    if pairs < 1:
        raise ValueError(f"bench scale: pairs must be at least 1, got {pairs}")
    base = [p for round_prompts in plan.rounds for p in round_prompts]
    result: dict[str, Any] = {"k": config.generation.k, "max_new_tokens": config.generation.max_new_tokens,
                              "top_p": config.generation.top_p, "judge": config.judge.kind,
                              "generators": config.resources.generators,
                              "train_workers": config.resources.train_workers, "sizes": {}}
    for n in sorted(sizes):
        prompts, paired = scale_prompts(base, n), {}

        def in_pairs(session, prompts=prompts, scratch=out / f"scale_{n}_pair") -> None:
            paired.update(paired_generation(config, session, prompts, scratch, pairs))

        pipeline = _pipeline_round(config, plan, prompts, out / f"scale_{n}", rounds, after=in_pairs)
        bare_tps = statistics.mean(b["tokens_per_s"] for b in paired["bare"])
        gen_tps = pipeline["generated_tokens"] / pipeline["seconds"]["generate"]
        result["sizes"][str(n)] = {
            "prompts": n, "pipeline": pipeline, "bare_generation": {**paired, "tokens_per_s": bare_tps},
            "pipeline_generation_tokens_per_s": gen_tps,
            "seconds_per_1k_prompts": {s: pipeline["seconds"].get(s, 0.0) * 1000 / n for s in (*STAGES, "round")},
            "ratio_pipeline_over_bare_generation": paired["ratio"],
            # the round's own generation stage over the pairs' bare mean: one run, minutes from the pairs
            "ratio_round_generation_over_bare": gen_tps / bare_tps,
            "driver_growth_over_arrow_held": pipeline["driver_growth"] / pipeline["arrow_bytes_held"],
        }
        if keep is not None:  # written after each size: a later size failing loses nothing
            keep(result)
    result["linearity"] = linearity(result["sizes"])
    result["driver_growth_per_table_byte"] = driver_growth_slope(result["sizes"])
    result["paper_round_dataset_stage"] = dataset = measure_dataset_stage(paper_shape[0], config.generation.k,
                                                                          paper_shape[1])
    largest = result["sizes"][str(max(sizes))]
    result["paper_round_driver_bytes"] = paper_round_driver_bytes(
        largest, config.generation.k, dataset["growth_bytes"],
        dataset["fit_input_bytes"] if dataset["driver_reads_fit_input"] else 0,
        dataset["generation_growth_bytes"])
    return result


def linearity(sizes: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Per stage (and the round): seconds per 1k prompts at the largest size over the smallest's (1.0: linear)."""
    ordered = sorted(sizes.values(), key=lambda s: s["prompts"])
    small, large = ordered[0]["seconds_per_1k_prompts"], ordered[-1]["seconds_per_1k_prompts"]
    return {s: large[s] / small[s] for s in small if small[s] > 0}


def driver_growth_slope(sizes: dict[str, dict[str, Any]]) -> float | None:
    """How much more the driver grew per byte more of the round's tables (responses and the judge's tables, as
    Arrow), from the smallest size to the largest: 1.0 is a driver that would hold each once; the driver keeps
    only the judge's tables, so below 1.0 is the target (issue 23: grow by no more than the round's tables). What
    it grows by at every size alike (a stage's Ray Data execution, the first fit's imports) does not enter. None
    with one size, or with sizes whose tables are the same bytes."""
    ordered = sorted(sizes.values(), key=lambda s: s["prompts"])
    small, large = ordered[0]["pipeline"], ordered[-1]["pipeline"]
    held = large["arrow_bytes_held"] - small["arrow_bytes_held"]
    return (large["driver_growth"] - small["driver_growth"]) / held if held > 0 else None


def paper_round_driver_bytes(measured: dict[str, Any], k: int, dataset_stage_bytes: float = 0,
                             fit_input_bytes: float = 0, generation_stage_bytes: float = 0) -> dict[str, float]:
    """The driver's growth at the paper's round, extrapolated from one measured size.

    The round's responses grow with prompts × K × response tokens, its tables with prompts × K²; each is scaled
    from the measured Arrow bytes. The driver holds only the judge's tables (the responses are written to
    responses.parquet as they arrive and read back a slice at a time); what it grew beyond them is added as a
    fixed overhead (a ratio would blow a few MB of start-up noise up to gigabytes). On top comes the largest of
    what, at the paper's shape, the generation stage's spooling adds (``generation_stage_bytes``), the dataset
    stage adds (``dataset_stage_bytes``) and the driver reads of train.parquet for the fit (``fit_input_bytes``),
    each measured on synthetic tables (:func:`~sppo_ray.bench.paper_round.measure_dataset_stage`); at 16-token
    answers none of them can show.
    """
    p = measured["pipeline"]
    n, tokens = measured["prompts"], max(p["mean_response_tokens"], 1.0)
    scale_n = PAPER_PROMPTS / n
    tables = p["arrow_bytes"]["tables"] * scale_n
    arrow = p["arrow_bytes"]["responses"] * scale_n * PAPER_RESPONSE_TOKENS / tokens + tables
    overhead = max(0, p["driver_growth"] - p["arrow_bytes"]["tables"])
    return {"prompts": PAPER_PROMPTS, "k": k, "response_tokens": PAPER_RESPONSE_TOKENS, "arrow_bytes": arrow,
            "tables_bytes": tables, "fixed_overhead_bytes": overhead,
            "generation_stage_bytes": generation_stage_bytes, "dataset_stage_bytes": dataset_stage_bytes,
            "fit_input_bytes": fit_input_bytes,
            "driver_growth_bytes": overhead + tables + max(generation_stage_bytes, dataset_stage_bytes,
                                                           fit_input_bytes)}


def _means(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The mean wall seconds and engine / rest CPU seconds of ``_timed`` runs."""
    return {"seconds": statistics.mean(r["seconds"] for r in runs),
            **{k: statistics.mean(r["cpu_seconds"][k] for r in runs) for k in ("engine", "rest")}}


def scale_table(result: dict[str, Any]) -> str:
    """The Markdown table BENCHMARKS.md's "Scale" section shows."""
    mb = 2**20
    head = ("| prompts | generate s (s/1k) | judge s (s/1k) | train s (s/1k) | round s (s/1k) | pipeline/bare gen "
            "| driver +MB own/RSS (tables MB) | object store peak MB | Parquet MB resp/tables/train |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key in sorted(result["sizes"], key=int):
        s = result["sizes"][key]
        p, per = s["pipeline"], s["seconds_per_1k_prompts"]
        cells = [f"{p['seconds'].get(st, 0.0):.1f} ({per[st]:.1f})" for st in ("generate", "judge", "train", "round")]
        store = "n/a" if p["object_store_peak"] is None else f"{p['object_store_peak'] / mb:.0f}"
        files = "/".join(f"{p['parquet_bytes'][f] / mb:.1f}" for f in ("responses", "tables", "train"))
        own = f"{p['driver_private_growth'] / mb:.0f}/" if "driver_private_growth" in p else "n/a/"  # older JSON
        lines.append(f"| {s['prompts']:,} | " + " | ".join(cells) +
                     f" | {s['ratio_pipeline_over_bare_generation']:.2f} | {own}{p['driver_growth'] / mb:.0f} "
                     f"({p['arrow_bytes_held'] / mb:.1f}) | {store} | {files} |")
    lines.append("")
    for key in sorted(result["sizes"], key=int):  # where the driver grew (absent from an older run's JSON)
        p = result["sizes"][key]["pipeline"]
        if by_stage := p.get("driver_growth_by_stage"):
            # the sizes run one after another in one driver: a start level that keeps climbing is a per-round leak
            lines.append(f"driver +MB by stage at {int(key):,} prompts: " +
                         ", ".join(f"{st} {b / mb:.0f}" for st, b in by_stage.items()) +
                         f" (RSS at the round's start {p['driver_rss_before'] / mb:.0f} MB)")
        if own := p.get("driver_private_growth_by_stage"):  # less the pages shared with other processes
            lines.append(f"driver's own memory +MB by stage at {int(key):,} prompts: " +
                         ", ".join(f"{st} {b / mb:.0f}" for st, b in own.items()))
    for key in sorted(result["sizes"], key=int):  # several rounds in one session: does the driver settle?
        if len(starts := result["sizes"][key]["pipeline"].get("driver_rss_at_round_starts", [])) > 1:
            lines.append(f"driver RSS at each round's start at {int(key):,} prompts, one session: " +
                         ", ".join(f"{b / mb:.0f}" for b in starts) + " MB")
    for key in sorted(result["sizes"], key=int):  # the pairs behind the ratio, and where their CPU went
        s = result["sizes"][key]
        bare, pipe = s.get("bare_generation", {}), s["pipeline"].get("generate_cpu_seconds")
        if "ratios" not in bare:  # an older run's JSON: bare before and after the round
            continue
        lines.append(f"generation / bare engine in pairs at {int(key):,} prompts: " +
                     ", ".join(f"{r:.2f}" for r in bare["ratios"]) + f" (median {bare['ratio']:.2f}); the round's "
                     f"own stage {s['pipeline_generation_tokens_per_s']:,.0f} tokens/s over the pairs' bare mean "
                     f"{bare['tokens_per_s']:,.0f}: {s['ratio_round_generation_over_bare']:.2f}")
        mean = {side: _means(bare[side]) for side in ("pipeline", "bare")}
        if pipe:
            lines.append(f"CPU s while generating at {int(key):,} prompts: the round's stage "
                         f"{s['pipeline']['seconds']['generate']:.1f} s wall, engine process {pipe['engine']:.1f} + "
                         f"rest of the machine {pipe['rest']:.1f}; in pairs (means), the stage alone "
                         f"{mean['pipeline']['seconds']:.1f} s wall, engine {mean['pipeline']['engine']:.1f} + rest "
                         f"{mean['pipeline']['rest']:.1f}, the bare engine {mean['bare']['seconds']:.1f} s wall, "
                         f"engine {mean['bare']['engine']:.1f} + rest {mean['bare']['rest']:.1f}")
    for key in sorted(result["sizes"], key=int):  # what the engine did meanwhile (absent from older JSON)
        bare = result["sizes"][key].get("bare_generation", {})
        if "ratios_at_equal_step_speed" not in bare:
            continue
        sides = {}
        for side in ("pipeline", "bare"):
            timelines = [r["engine_timeline"] for r in bare[side]]
            t = {k: statistics.mean(tl[k] for tl in timelines) for k in timelines[0]}
            sides[side] = (f"{t['steps']:.0f} steps of {1000 * t['stepping'] / max(t['steps'], 1):.1f} ms, "
                           f"not stepping {t['before_first']:.2f} s before the first, {t['between']:.2f} between "
                           f"steps, {t['after_last']:.2f} after the last")
        equal = bare["ratios_at_equal_step_speed"]
        lines.append(f"the engine in pairs at {int(key):,} prompts (means): the stage alone {sides['pipeline']}; the "
                     f"bare engine {sides['bare']}; generation / bare at the bare run's step speed: " +
                     ", ".join(f"{r:.2f}" for r in equal) + f" (median {statistics.median(equal):.2f})")
    for key in sorted(result["sizes"], key=int):  # and which processes (absent from older JSON)
        if busiest := result["sizes"][key]["pipeline"].get("generate_cpu_by_process"):
            lines.append(f"CPU s by process while generating at {int(key):,} prompts: " +
                         ", ".join(f"{label} {seconds:.1f}" for label, seconds in busiest))
    if (slope := result.get("driver_growth_per_table_byte")) is not None:
        lines.append(f"driver growth per MB more of the round's tables, smallest size to largest: {slope:.2f} MB")
    if dataset := result.get("paper_round_dataset_stage"):
        lines.append(f"the driver's own work alone at {dataset['prompts']:,} prompts × {dataset['k']} answers of "
                     f"{dataset['response_tokens']} tokens (synthetic tables of {dataset['tables_arrow_bytes'] / mb:.0f}"
                     f" MB): driver +{dataset.get('generation_growth_bytes', 0) / mb:.0f} MB spooling and assembling the "
                     f"responses ({dataset.get('generation_seconds', 0):.1f} s), "
                     f"+{dataset['growth_bytes'] / mb:.0f} MB in the dataset stage, {dataset['seconds']:.1f} s; "
                     f"the fit's input {dataset.get('fit_input_bytes', 0) / mb:.0f} MB (the whole training set "
                     f"{dataset.get('train_arrow_bytes', 0) / mb:.0f} MB), read by "
                     + ("the driver" if dataset.get("driver_reads_fit_input", True) else
                        "Ray Data's tasks, not the driver (train.parquet above training.trainer.DRIVER_READ_BYTES)"))
    if (paper := result.get("paper_round_driver_bytes")) and "tables_bytes" in paper:
        lines.append(f"driver at the paper's round ({paper['prompts']:,} prompts, {paper['response_tokens']}-token "
                     f"answers), extrapolated: +{paper['driver_growth_bytes'] / mb:.0f} MB against the round's "
                     f"{paper['arrow_bytes'] / mb:.0f} MB of responses and tables (the judge's tables it holds "
                     f"{paper['tables_bytes'] / mb:.0f} MB, fixed overhead {paper['fixed_overhead_bytes'] / mb:.0f} MB)")
    return "\n".join(lines)
