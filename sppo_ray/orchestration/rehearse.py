"""`sppo-ray rehearse`: a config's whole orchestration in miniature, on the Ray cluster it is given.

The config keeps its layout, role counts and GPU shares, K, preference table, selection, batching, loss and
broadcast path; its models become tiny random ones of the same architectures (``sppo_ray/tiny_models.py``), its
rounds a few prompts with short responses, and a colocated layout gets one bundle per GPU of the cluster. Round 0
runs in one driver, round 1 in a second one that resumes the run directory, exactly as `sppo-ray resume` does.

On CPU nodes (this machine's simulated cluster, ``--nodes/--gpus-per-node``, or a CPU cluster whose nodes declare
GPUs) every role still reserves its GPU share from Ray (``resources.logical_gpus``), so placement groups, bundles
and CUDA_VISIBLE_DEVICES are what a GPU run gets, while the compute runs on CPU and the GPU-only mechanisms (CUDA,
engine sleep, the trainer -> engine transfer, judge memory) are recorded no-ops. On GPU nodes every check is
measured. ``RUN_DIR/rehearsal.json`` holds the roles, the checks and the stages; the exit code is non-zero when a
check failed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from sppo_ray.config import RunConfig, load_config
from sppo_ray.orchestration.nodes import cuda_version_code, probe_nodes
from sppo_ray.orchestration.sim_cluster import simulated_cluster

__all__ = ["Check", "check_table", "rehearsal_config", "rehearse"]

REHEARSAL_JSON = "rehearsal.json"
# Short rounds: at least 8 prompts, and 2 per train worker or generator (the same 8 prompts for any layout of up to
# 4 workers, so two layouts' rehearsals can be compared), new tokens per response.
MIN_PROMPTS, PROMPTS_PER_WORKER = 8, 2
NEW_TOKENS = 8
# Learning rate of the rehearsal's fit: large enough that π_{t+1}'s log-probs differ measurably from π_t's, so the
# broadcast check can tell which policy a generator holds (the config's own rate barely moves a random model).
REHEARSAL_LR = 1e-3


@dataclass
class Check:
    name: str
    ok: bool
    # The measured number(s) behind the verdict.
    figure: Any
    detail: str
    # True: measured on this cluster's hardware; False: a recorded no-op (GPU mechanisms on CPU nodes).
    real: bool = True
    # What to change when it fails.
    fix: str = ""


def _gpus_in_config(config: RunConfig) -> bool:
    r = config.resources
    return bool(r.train_use_gpu or r.generator_gpus or r.judge_gpus)


def rehearsal_config(config: RunConfig, cluster_gpus: int, real: bool, run_dir: Path, policy: Path,
                     judge: Path | None) -> dict[str, Any]:
    """The config in miniature (a dict, as a YAML file holds it): same orchestration, tiny models and rounds."""
    d = config.to_dict()
    r = d["resources"]
    if config.resources.placement == "colocated" and config.resources.train_use_gpu and cluster_gpus:
        r.update(generators=cluster_gpus, judges=cluster_gpus, train_workers=cluster_gpus)  # one bundle per GPU
    r["logical_gpus"] = _gpus_in_config(config) and not real
    workers = r["train_workers"]
    verifiable = config.judge.kind == "verifier"
    d.update(name=f"{config.name}-rehearsal", run_dir=str(run_dir), iterations=2)
    d["models"] = {"policy": str(policy), "judge": str(judge) if judge else str(policy), "trust_remote_code": False}
    d["data"] = {"prompts": "embedded:verifiable" if verifiable else "embedded:default",
                 "prompts_per_iteration": max(MIN_PROMPTS, PROMPTS_PER_WORKER * max(workers, r["generators"])),
                 "eval_prompts": min(config.data.eval_prompts, 4), "split_seed": config.data.split_seed}
    g = d["generation"]
    g.update(max_new_tokens=NEW_TOKENS, max_prompt_tokens=min(g["max_prompt_tokens"], 96), kv_cache_gib=1 / 16,
             batch_size=min(g["batch_size"], 4))
    # the engine's own buffers scale with its context (the Mistral config's 32k would cost ~0.5 GB an engine)
    g["max_model_len"] = g["max_prompt_tokens"] + NEW_TOKENS
    if not real:
        g.update(dtype="auto", enforce_eager=None)  # float32 and eager on CPU
    d["judge"].update(max_source_tokens=min(d["judge"]["max_source_tokens"], 96),
                      max_candidate_tokens=min(d["judge"]["max_candidate_tokens"], 32))
    t = d["training"]
    # one row a micro-batch: a tiny round gives each worker about PROMPTS_PER_WORKER rows (the paper configs'
    # micro-batch of 4 is about a 7B model's memory, which `sppo-ray plan` and the GPU checks cover, not placement)
    t.update(lr=REHEARSAL_LR, epochs=1, max_length=160, max_prompt_length=max(g["max_prompt_tokens"], 96),
             micro_batch_size=1, global_batch_size=workers, checkpoint_every=0)
    d["tracking"] = {"kind": "none"}
    return d


def tiny_models(config: RunConfig, root: Path) -> tuple[Path, Path | None]:
    """Tiny random models of the config's policy and judge architectures (None: a judge without a model)."""
    from sppo_ray.tiny_models import tiny_pairrm, tiny_policy

    policy = tiny_policy(config.models.policy, root / "policy")
    if config.judge.kind == "pairrm":
        return policy, tiny_pairrm(root / "pairrm")
    if config.judge.kind == "llm":  # the judge is a causal LM: a tiny one of its architecture
        return policy, tiny_policy(config.models.judge, root / "judge", seed=1)
    return policy, None


def node_checks(config: RunConfig, nodes: list[dict[str, Any]], real: bool) -> list[Check]:
    gpu_nodes = [n for n in nodes if n["ray_gpus"] > 0]
    gpus = int(sum(n["ray_gpus"] for n in gpu_nodes))
    checks = [Check("cluster", bool(gpus) or not _gpus_in_config(config),
                    {"nodes": len(nodes), "gpu_nodes": len(gpu_nodes), "gpus": gpus},
                    f"{len(nodes)} node(s), {len(gpu_nodes)} declaring {gpus} GPU(s)",
                    fix="the config uses GPUs: run on GPU nodes, or simulate them with --nodes N --gpus-per-node G")]
    if not real:
        checks.append(Check("cuda", True, None, "logical GPUs: every role computes on CPU", real=False))
    else:
        bad = [n for n in gpu_nodes if not n["cuda"] or n["devices"] < n["ray_gpus"]
               or (n["driver_api"] or 0) < cuda_version_code(n["torch_cuda"])]
        checks.append(Check(
            "cuda", not bad, {n["node_id"][:8]: {"devices": n["devices"], "driver_api": n["driver_api"]}
                              for n in gpu_nodes},
            f"torch built for CUDA {gpu_nodes[0]['torch_cuda']}; " + ("every GPU node runs it" if not bad else
                                                                     f"{len(bad)} node(s) cannot"),
            fix="install an NVIDIA driver that supports the CUDA of the pinned torch (CUDA 13: the R580 line or "
                "newer) on every GPU node"))
    readers = [n for n in nodes if n["reads_run_dir"]]
    checks.append(Check("run_dir_every_node", len(readers) == len(nodes), {"nodes_reading": len(readers),
                                                                            "nodes": len(nodes)},
                        "a file the driver wrote into the run directory, read back by a task on each node",
                        fix="put run_dir on storage every node mounts (a shared volume)"))
    return checks


# -- checks on the finished run ---------------------------------------------------------------------------------


def _gpu_key(place: dict[str, Any], real: bool) -> tuple[str, str]:
    """The (node, GPU) a role computes on: the CUDA UUID on GPUs, Ray's GPU id on logical ones."""
    if real and place.get("gpu_uuid"):
        return (place["node_id"], place["gpu_uuid"])
    return (place["node_id"], ",".join(place.get("gpu_ids") or []))


def layout_bundle(place: dict[str, Any], bundles: list[dict[str, Any]]) -> int | None:
    """The layout's bundle index of an actor (Ray reports its placement group and the bundle inside it)."""
    for b in bundles:
        if b["placement_group_id"] == place.get("placement_group_id") and place.get("bundles") == [b["bundle_in_group"]]:
            return b["index"]
    return None


def roles_of(placement: dict[str, Any], colocation: dict[str, Any] | None,
             train_ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """rehearsal.json's role rows: role, index, node, GPU ids (UUID on GPUs), the layout's bundle (None outside)."""
    bundles = colocation["bundles"] if colocation else []
    rows = []
    for role, places in (("generator", placement.get("generators", [])), ("judge", placement.get("judges", [])),
                         ("train", train_ranks)):
        for i, p in enumerate(places):
            rows.append({"role": role, "index": p.get("rank", i), "node_id": p["node_id"],
                         "gpu_ids": [p["gpu_uuid"]] if p.get("gpu_uuid") else list(p.get("gpu_ids") or []),
                         "bundle": layout_bundle(p, bundles) if role != "train" else None})
    return rows


def placement_check(config: RunConfig, placement: dict[str, Any], colocation: dict[str, Any] | None,
                    train_ranks: list[dict[str, Any]], real: bool) -> Check:
    """Colocated: every bundle on its own (node, GPU); generator i and judge i on bundle i's; one train worker on
    each bundle's GPU; every node used. Disaggregated: no two whole-GPU roles on one GPU."""
    r = config.resources
    gens, judges = placement.get("generators", []), placement.get("judges", [])
    nodes = {p["node_id"] for p in [*gens, *judges, *train_ranks]}
    problems: list[str] = []
    if colocation is not None:
        bundles = colocation["bundles"]
        bundle_gpu = {b["index"]: _gpu_key(gens[b["index"]], real) for b in bundles}
        if len(set(bundle_gpu.values())) != len(bundles):
            problems.append("two bundles share a GPU")
        for role, places in (("generator", gens), ("judge", judges)):
            for i, p in enumerate(places):
                if layout_bundle(p, bundles) != i or p["node_id"] != bundles[i]["node_id"]:
                    problems.append(f"{role} {i} is not in bundle {i} (it is in {layout_bundle(p, bundles)})")
                elif _gpu_key(p, real) != bundle_gpu[i] and r.generator_gpus:
                    problems.append(f"{role} {i} is not on bundle {i}'s GPU")
        if r.train_use_gpu:
            train_gpus = sorted(_gpu_key(p, real) for p in train_ranks)
            if train_gpus != sorted(bundle_gpu.values()):
                problems.append(f"train workers on {len(set(train_gpus))} distinct GPUs, not one on each of the "
                                f"{len(bundles)} bundles' GPUs")
        alive = {b["node_id"] for b in bundles}
        figure = {"bundles": len(bundles), "distinct_gpus": len(set(bundle_gpu.values())), "nodes_used": len(alive),
                  "placement_groups": len(colocation.get("placement_groups", []))}
    else:
        whole = [p for p, share in [*[(g, r.generator_gpus) for g in gens], *[(j, r.judge_gpus) for j in judges],
                                    *[(t, 1.0 if r.train_use_gpu else 0) for t in train_ranks]] if share >= 1]
        keys = [_gpu_key(p, real) for p in whole]
        if len(set(keys)) != len(keys):
            problems.append("two roles that each hold a whole GPU share one")
        figure = {"whole_gpu_roles": len(whole), "distinct_gpus": len(set(keys)), "nodes_used": len(nodes)}
    return Check("placement", not problems, figure, "; ".join(problems) or
                 f"{r.placement}: every role where the layout puts it, on {len(nodes)} node(s)",
                 fix="see colocation.json / placement.json for where each role ran")


def train_check(ranks_by_round: dict[int, list[dict[str, Any]]], workers: int) -> Check:
    steps = {t: [p["steps"] for p in ranks] for t, ranks in ranks_by_round.items()}
    ok = all(len(ranks) == workers and all(p["steps"] >= 1 and p["last_loss"] is not None
                                           and math.isfinite(p["last_loss"]) for p in ranks)
             for ranks in ranks_by_round.values()) and bool(ranks_by_round)
    return Check("deepspeed_step_every_rank", ok, {"steps_per_rank": steps},
                 f"{workers} rank(s) per round, each ran its optimiser steps with a finite loss" if ok else
                 "a rank ran no step or got a non-finite loss", fix="see RUN_DIR/ray_train and the workers' logs")


def export_logprobs(model_dir: Path, token_ids: list[int]) -> list[float]:
    """Per-token log-probs of ``token_ids`` under an exported model, by transformers in float32 on this host."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(token_ids[1:])[:, None])[:, 0]
    return lp.tolist()


def weights_check(manifest: dict[str, Any], models: dict[int, Path], tol: float) -> Check:
    """After each round's broadcast, every generator's log-probs of the fingerprint text equal the export of
    π_{t+1} (within ``tol``) and are closer to it than to π_t's."""
    figure, problems = {}, []
    for key in sorted(manifest["rounds"], key=int):
        t = int(key)
        prints = manifest["rounds"][key].get("fingerprints") or []
        if not prints:
            problems.append(f"round {t}: no fingerprints recorded")
            continue
        new = export_logprobs(models[t + 1], prints[0]["token_ids"])
        old = export_logprobs(models[t], prints[0]["token_ids"])
        to_new = max(max(abs(a - b) for a, b in zip(p["logprobs"], new)) for p in prints)
        to_old = min(max(abs(a - b) for a, b in zip(p["logprobs"], old)) for p in prints)
        versions = sorted({p["version"] for p in prints})
        figure[f"round_{t}"] = {"max_abs_to_new": to_new, "min_abs_to_old": to_old, "versions": versions}
        if versions != [t + 1] or to_new > tol or to_old <= to_new:
            problems.append(f"round {t}: generators hold v{versions}, log-probs {to_new:.2e} from π_{t + 1}'s export "
                            f"and {to_old:.2e} from π_{t}'s")
    return Check("weights_after_broadcast", not problems and bool(figure), figure,
                 "; ".join(problems) or f"every generator's log-probs match the export within {tol:g}",
                 fix="check the broadcast path (generation.weight_sync) and the generators' logs")


def broadcast_check(sessions: list[dict[str, Any] | None], expect: str) -> Check:
    """How π_{t+1} reached the generators after each fit (each driver records its rounds' broadcasts)."""
    paths = []
    for report in sessions:
        if report and "broadcasts" in report:
            paths += report["broadcasts"]
    if not paths:
        return Check("broadcast_path", True, None, "disaggregated layout: not recorded", real=expect == "trainer")
    return Check("broadcast_path", all(p == expect for p in paths), paths, f"expected {expect!r} after every fit",
                 real=expect == "trainer", fix="see the train workers' 'weight transfer' log lines")


def sleep_check(sessions: list[dict[str, Any] | None], real: bool) -> Check:
    events = [e for report in sessions if report for gen in report.get("generator_sleep", []) for e in gen]
    if not events:
        return Check("engine_sleep", True, None, "disaggregated layout: engines never sleep", real=False)
    if not real:
        return Check("engine_sleep", all(not e["real"] for e in events), {"calls": len(events)},
                     "CPU: sleep and wake-up calls recorded in every stage, no memory to release", real=False)
    measured = [e for e in events if e["real"] and e["free_gib_before"] is not None]
    freed = [e["free_gib_after"] - e["free_gib_before"] for e in measured if e["call"] == "sleep"]
    back = [e["free_gib_before"] - e["free_gib_after"] for e in measured if e["call"] == "wake_up"]
    ok = bool(freed) and min(freed) > 0 and bool(back) and max(back) > 0
    return Check("engine_sleep", ok, {"freed_gib_min": min(freed, default=None), "woken_gib_max": max(back, default=None)},
                 "GPU memory freed by each sleep and taken again by wake-up (torch.cuda.mem_get_info)",
                 fix="generation.sleep_level, and vLLM's sleep mode on this GPU")


def judge_memory_check(config: RunConfig, judge_path: Path | None, real: bool) -> Check:
    """On GPUs: one PairRM-architecture batch at judge.max_batch_tokens on every judge replica, within its share."""
    if not real or judge_path is None:
        return Check("judge_batch_memory", True, None, "CPU: GPU memory not measured" if not real else
                     "a model-free judge", real=False)
    import ray

    from sppo_ray.actor_pool import shutdown_pool
    from sppo_ray.judging.stage import build_judge_actors

    j, r = config.judge, config.resources
    actors = build_judge_actors(str(judge_path), j, r, None)
    try:
        results = ray.get([a.memory_probe.remote(j.max_batch_tokens, j.max_source_tokens, j.max_candidate_tokens)
                           for a in actors])
    finally:
        shutdown_pool(actors)
    peak = max(x["peak_gib"] for x in results)
    share = r.judge_gpus * results[0]["device_gib"]
    return Check("judge_batch_memory", peak <= share, {"peak_gib": peak, "share_gib": share,
                                                         "pairs": results[0]["pairs"]},
                 f"the tiny judge at judge.max_batch_tokens {j.max_batch_tokens}; the real PairRM needs "
                 "`sppo-ray plan`'s figure", fix="lower judge.max_batch_tokens or raise resources.judge_gpus")


def stage_figures(manifest: dict[str, Any]) -> dict[str, Any]:
    keep = ("seconds", "prompts", "pairs", "rows", "steps", "rejected", "generated_tokens", "policy_version")
    return {key: {k: v for k, v in rec.items() if k in keep} for key, rec in manifest["stages"].items()}


# -- the command ---------------------------------------------------------------------------------------------------


def _run_rounds(config_file: Path, root: Path, eval_at_end: bool) -> list[tuple[dict | None, dict]]:
    """Round 0 in one driver, round 1 in a resumed one; the colocation and placement reports of each."""
    from sppo_ray.orchestration.driver import resume, run

    def reports() -> tuple[dict | None, dict]:
        coloc = root / "colocation.json"
        return (json.loads(coloc.read_text()) if coloc.exists() else None,
                json.loads((root / "placement.json").read_text()))

    run(str(config_file), ["iterations=1", "eval_at_end=false"])
    first = reports()
    resume(str(root), overrides=["iterations=2", f"eval_at_end={str(eval_at_end).lower()}"], allow_change=True)
    return [first, reports()]


def _connect() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)


def rehearse(config_path: str, overrides: list[str] | None = None, *, nodes: int = 0, gpus_per_node: int = 8,
             cpus_per_node: float | None = None, run_dir: str | None = None) -> tuple[int, Path]:
    """Rehearse a config; returns (exit code, run directory). ``nodes`` > 0 starts a simulated cluster of that many
    nodes with ``gpus_per_node`` logical GPUs; otherwise the cluster of RAY_ADDRESS (or a local Ray) is used."""
    config = load_config(config_path, overrides)
    root = Path(run_dir or f"runs/rehearse-{config.name}").resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    r = config.resources
    per_gpu = r.generator_cpus + r.judge_cpus + r.train_cpus_per_worker
    cpus = cpus_per_node or max(4.0, per_gpu * gpus_per_node + 1)
    started = time.perf_counter()
    with simulated_cluster(nodes, gpus_per_node, cpus) if nodes else nullcontext(None) as address:
        if address:
            os.environ["RAY_ADDRESS"] = address
        _connect()
        report = _rehearse_on_cluster(config, root)
    report["stages"]["wall_seconds"] = time.perf_counter() - started
    (root / REHEARSAL_JSON).write_text(json.dumps(report, indent=1) + "\n")
    print(check_table(report), flush=True)
    failed = [c for c in report["checks"] if not c["ok"]]
    if failed:
        print(f"rehearsal FAILED at {failed[0]['name']}: {failed[0]['detail']}"
              + (f"\n  what to change: {failed[0]['fix']}" if failed[0]["fix"] else ""), flush=True)
    return (1 if failed else 0), root


def _rehearse_on_cluster(config: RunConfig, root: Path) -> dict[str, Any]:
    infos = probe_nodes(root / ".rehearsal-token")
    real = any(n["cuda"] for n in infos if n["ray_gpus"] > 0)
    checks = node_checks(config, infos, real)
    report: dict[str, Any] = {"real": real, "config": config.name, "roles": [], "checks": [], "stages": {}}
    if not all(c.ok for c in checks):
        report["checks"] = [asdict(c) for c in checks]
        return report
    gpus = int(sum(n["ray_gpus"] for n in infos))
    policy, judge = tiny_models(config, root / "tiny_models")
    data = rehearsal_config(config, gpus, real, root, policy, judge)
    config_file = root / "rehearsal-config.yaml"
    config_file.write_text(yaml.safe_dump(data, sort_keys=False))
    small = RunConfig.model_validate(data)
    try:
        sessions = _run_rounds(config_file, root, config.eval_at_end)
    except Exception as err:  # noqa: BLE001 - the run's own error is the finding
        text = str(err)
        short = text if len(text) < 900 else f"{text.splitlines()[0][:300]} ... {text[-600:]}"
        checks.append(Check("run", False, None, f"{type(err).__name__}: {short}",
                            fix="the message names the field or resource; `sppo-ray plan` shows the layout"))
        report["checks"] = [asdict(c) for c in checks]
        return report
    manifest = json.loads((root / "manifest.json").read_text())
    ranks = {t: json.loads((root / f"round_{t}" / "model" / "train_ranks.json").read_text()) for t in (0, 1)}
    models = {0: policy, 1: root / "round_0" / "model", 2: root / "round_1" / "model"}
    colocations = [s[0] for s in sessions]
    resumed = manifest["stages"].get("round_1/generate", {}).get("policy_version") == 1
    checks += [
        Check("run", True, {"rounds": len(manifest["rounds"])}, "round 0, then round 1 in a resumed driver"),
        Check("resume", resumed and "0" in manifest["rounds"], {"round_1_started_from": 1 if resumed else None},
              "the second driver found round 0 finished and generated round 1 with π_1 from the export"),
        placement_check(small, sessions[-1][1], colocations[-1], ranks[1], real),
        train_check(ranks, small.resources.train_workers),
        weights_check(manifest, models, 1e-3 if not real else 0.1),
        broadcast_check(colocations, "trainer" if small.weight_transfer else "files"),
        sleep_check(colocations, real),
        judge_memory_check(small, judge, real),
    ]
    report.update(roles=roles_of(sessions[-1][1], colocations[-1], ranks[1]), checks=[asdict(c) for c in checks],
                  stages=stage_figures(manifest))
    return report


def check_table(report: dict[str, Any]) -> str:
    mode = "GPU nodes: every check measured" if report["real"] else "CPU nodes: GPU mechanisms are recorded no-ops"
    lines = [f"rehearsal of {report['config']} ({mode})", f"  {'check':<26} {'result':<7} detail"]
    for c in report["checks"]:
        verdict = ("PASS" if c["ok"] else "FAIL") if c["real"] or not c["ok"] else "no-op"
        lines.append(f"  {c['name']:<26} {verdict:<7} {c['detail'][:200]}")
    return "\n".join(lines)
