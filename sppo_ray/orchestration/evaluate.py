"""`sppo-ray eval`: a judged pairwise win-rate matrix between policies on held-out prompts (the paper's Figure 3).

Each model answers every held-out prompt once with fixed seeds (or best-of-N: N samples, the judge's favourite
kept), loaded into the same generator actors in place. Then the judge scores every prompt's answers from model a
against model b in both orders; W[a, b] is the mean debiased P(a ≻ b), so W[a, a] = ½ and W[a, b] + W[b, a] = 1.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from sppo_ray.contracts import PolicyWeights
from sppo_ray.data.prompts import Prompt
from sppo_ray.generation.stage import run_generation_stage
from sppo_ray.generation.weights import policy_weights
from sppo_ray.judging.scoring import judge_rows, prompt_text
from sppo_ray.judging.stage import RemoteJudge
from sppo_ray.judging.tables import debiased_table

__all__ = ["evaluate_run", "evaluate_session", "win_rate_matrix"]

_EVAL_ITERATION = -1  # enters the sample seeds: every model answers with the same seeds


def win_rate_matrix(pair_p: dict[tuple[int, int], np.ndarray], n_models: int) -> np.ndarray:
    """W[a, b] = mean over prompts of P(a ≻ b); ``pair_p[(a, b)]`` holds per-prompt probabilities for a < b."""
    w = np.full((n_models, n_models), 0.5)
    for (a, b), p in pair_p.items():
        w[a, b], w[b, a] = float(np.mean(p)), float(np.mean(1.0 - p))
    return w


def _answers(session, label_weights: PolicyWeights, prompts: list[Prompt], cfg, best_of: int) -> pa.Table:
    """One answer per prompt from one model; with best_of > 1 the judge picks among N samples."""
    session.broadcast(label_weights)
    table = run_generation_stage(prompts, session.generator_actors, label_weights, _EVAL_ITERATION,
                                 cfg.generation, samples=best_of).table
    rows = table.to_pylist()
    if best_of > 1:
        judged = judge_rows(rows, RemoteJudge(session.judge_actors[0]), "debiased", "pair")
        for row, j in zip(rows, judged):
            best = j["kept"][0] if j["kept"] else 0
            row["responses"], row["num_tokens"] = [row["responses"][best]], [row["num_tokens"][best]]
    return pa.Table.from_pylist([{"prompt_id": r["prompt_id"], "messages_json": r["messages_json"],
                                  "response": r["responses"][0], "num_tokens": r["num_tokens"][0]} for r in rows])


def _pairwise(judge_actor, answers: list[pa.Table]) -> dict[tuple[int, int], np.ndarray]:
    by_model = [{r["prompt_id"]: r for r in t.to_pylist()} for t in answers]
    common = sorted(set.intersection(*(set(m) for m in by_model)))
    out = {}
    for a in range(len(answers)):
        for b in range(a + 1, len(answers)):
            prompts, first, second = [], [], []
            for pid in common:
                text = prompt_text(json.loads(by_model[a][pid]["messages_json"]))
                ra, rb = by_model[a][pid]["response"], by_model[b][pid]["response"]
                prompts += [text, text]
                first += [ra, rb]
                second += [rb, ra]
            logits = np.asarray(ray.get(judge_actor.pair_logits.remote(prompts, first, second))).reshape(-1, 2)
            tables = debiased_table(np.stack([np.array([[0.0, l[0]], [l[1], 0.0]]) for l in logits]))
            out[(a, b)] = tables[:, 0, 1]
    return out


def _heatmap(w: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.0 * len(labels) + 2))
    im = ax.imshow(w, cmap="RdBu", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("opponent (column)")
    ax.set_ylabel("model (row)")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{w[i, j]:.3f}", ha="center", va="center", color="black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="P(row beats column)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_session(session, rd, config, held_out: list[Prompt], *, models: list[tuple[str, str]] | None = None,
                     best_of: int = 1, out_rel: str = "eval") -> dict[str, Any]:
    """Evaluate models with the session's live actors; writes matrix JSON/CSV, heatmap PNG, answers Parquet."""
    if models is None:
        models = [("pi_0", str(session.base_policy))]
        models += [(f"pi_{t + 1}", rd.local_path(f"round_{t}/model"))
                   for t in range(config.iterations) if rd.done(t, "train")]
    restore = session.weights
    answers = [_answers(session, policy_weights(p, 10_000 + i), held_out, config, best_of)
               for i, (_, p) in enumerate(models)]
    if restore.version != session.weights.version:
        session.broadcast(restore)
    w = win_rate_matrix(_pairwise(session.judge_actors[0], answers), len(models))
    labels = [m[0] for m in models]
    result = {
        "models": labels,
        "paths": [m[1] for m in models],
        "matrix": w.tolist(),
        "win_rate_vs_first": w[:, 0].tolist(),
        "mean_response_tokens": [float(np.mean(a.column("num_tokens").to_pylist())) for a in answers],
        "prompts": len(held_out),
        "best_of": best_of,
        "judge": config.judge.kind,
    }
    rd.write_json(f"{out_rel}/matrix.json", result)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model"] + labels)
    for label, row in zip(labels, w):
        writer.writerow([label] + [f"{x:.4f}" for x in row])
    rd.write_bytes(f"{out_rel}/matrix.csv", buf.getvalue().encode())
    for label, a in zip(labels, answers):
        rd.write_parquet(f"{out_rel}/answers_{label}.parquet", a)
    title = f"judged win rate ({config.judge.kind}), {len(held_out)} held-out prompts" + (
        f", best-of-{best_of}" if best_of > 1 else "")
    _heatmap(w, labels, Path(rd.local_path(f"{out_rel}/heatmap.png")), title)
    manifest = rd.manifest()
    manifest["eval"] = result
    rd.write_json("manifest.json", manifest)
    print("eval: win-rate matrix (row beats column)\n" + buf.getvalue(), flush=True)
    return result


def evaluate_run(run_dir: str, *, models: list[str] | None, best_of: int, n_prompts: int | None,
                 out: str | None) -> dict[str, Any]:
    """CLI entry: start actors for a finished run and evaluate its models (or the given ones)."""
    from sppo_ray.config import parse_config
    from sppo_ray.orchestration.preflight import plan_run
    from sppo_ray.orchestration.rundir import RunDir
    from sppo_ray.orchestration.session import Session, init_ray
    from sppo_ray.models import resolve_model

    rd = RunDir(run_dir)
    config = parse_config(rd.read_config())
    plan = plan_run(config)
    held_out = plan.held_out[:n_prompts] if n_prompts else plan.held_out
    chosen = None
    if models:
        chosen = [(Path(m).name if Path(m).exists() else m, str(resolve_model(m))) for m in models]
    init_ray(config)
    session = Session.start(config, plan.policy_path, plan.judge_path)
    try:
        return evaluate_session(session, rd, config, held_out, models=chosen, best_of=best_of,
                                out_rel=out or ("eval" if best_of == 1 else f"eval_best_of_{best_of}"))
    finally:
        session.shutdown()
