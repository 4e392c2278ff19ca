"""`sppo-ray eval`: a judged pairwise win-rate matrix between policies on held-out prompts (the paper's Figure 3).

Each model answers every held-out prompt once with fixed seeds (or best-of-N: N samples, the judge's favourite
kept), loaded into the same generator actors in place. Then the judge scores every prompt's answers from model a
against model b in both orders; W[a, b] is the mean debiased P(a ≻ b), so W[a, a] = ½ and W[a, b] + W[b, a] = 1.

When the held-out prompts carry verifiable instructions, each model also answers them greedily, and IFEval's
accuracies of both answers go to ``eval/instruction_following.json`` (see :func:`instruction_following`).
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
from sppo_ray.instructions import evaluate_answers
from sppo_ray.judging.scoring import judge_rows, prompt_text
from sppo_ray.judging.stage import ReplicatedJudge
from sppo_ray.judging.tables import debiased_table
from sppo_ray.runtime import set_role_log_dir

__all__ = ["evaluate_run", "evaluate_session", "instruction_following", "win_rate_matrix"]

_EVAL_ITERATION = -1  # enters the sample seeds: every model answers with the same seeds


def win_rate_matrix(pair_p: dict[tuple[int, int], np.ndarray], n_models: int) -> np.ndarray:
    """W[a, b] = mean over prompts of P(a ≻ b); ``pair_p[(a, b)]`` holds per-prompt probabilities for a < b."""
    w = np.full((n_models, n_models), 0.5)
    for (a, b), p in pair_p.items():
        w[a, b], w[b, a] = float(np.mean(p)), float(np.mean(1.0 - p))
    return w


def _greedy(generator_actors: list, prompts: list[Prompt], max_new_tokens: int) -> dict[str, str]:
    """Greedy answers {prompt id: text}, the prompts spread over the generators."""
    n = len(generator_actors)
    chunks = [prompts[i::n] for i in range(n)]
    refs = [a.greedy.remote([list(p.messages) for p in chunk], max_new_tokens)
            for a, chunk in zip(generator_actors, chunks) if chunk]
    return {p.id: text for chunk, texts in zip([c for c in chunks if c], ray.get(refs)) for p, text in zip(chunk, texts)}


def _answers(session, label_weights: PolicyWeights, prompts: list[Prompt], cfg, best_of: int,
             greedy: bool = False) -> pa.Table:
    """One answer per prompt from one model; with best_of > 1 the judge picks among N samples. ``greedy`` adds a
    ``greedy_response`` column (temperature 0) for the instruction-following accuracies."""
    session.broadcast(label_weights, record=False)
    session.enter("generate")
    table = run_generation_stage(prompts, session.generator_actors, label_weights, _EVAL_ITERATION,
                                 cfg.generation, samples=best_of).table
    rows = table.to_pylist()
    if best_of > 1:
        instructions = {p.id: p.instructions_json for p in prompts}  # the verifier judge's input
        rows = [{**r, "instructions_json": instructions[r["prompt_id"]]} for r in rows]
        session.enter("judge")  # colocated: engines asleep, every judge replica on its GPU
        judged = judge_rows(rows, ReplicatedJudge(session.judge_actors), "debiased", "pair")
        for row, j in zip(rows, judged):
            best = j["kept"][0] if j["kept"] else 0
            row["responses"], row["num_tokens"] = [row["responses"][best]], [row["num_tokens"][best]]
    out = [{"prompt_id": r["prompt_id"], "messages_json": r["messages_json"], "response": r["responses"][0],
            "num_tokens": r["num_tokens"][0]} for r in rows]
    if greedy:
        session.enter("generate")
        texts = _greedy(session.generator_actors, prompts, cfg.generation.max_new_tokens)
        out = [{**r, "greedy_response": texts[r["prompt_id"]]} for r in out]
    return pa.Table.from_pylist(out)


def instruction_following(held_out: list[Prompt], labels: list[str], answers: list[pa.Table], sampled: str,
                          config) -> dict[str, Any]:
    """The content of ``eval/instruction_following.json``: per model and decoding, IFEval's accuracies
    (:func:`sppo_ray.instructions.accuracy`) on the held-out prompts that carry instructions."""
    instructions = {p.id: p.instructions for p in held_out if p.instructions}
    models = {}
    for label, table in zip(labels, answers):
        rows = table.to_pylist()
        models[label] = {
            "greedy": evaluate_answers(instructions, {r["prompt_id"]: r["greedy_response"] for r in rows}),
            sampled: evaluate_answers(instructions, {r["prompt_id"]: r["response"] for r in rows}),
        }
    g = config.generation
    return {
        "prompts": len(instructions),
        "decoding": {"greedy": f"temperature 0, at most {g.max_new_tokens} new tokens",
                     sampled: f"temperature {g.temperature}, top_p {g.top_p}, at most {g.max_new_tokens} new tokens, "
                              "one fixed seed per prompt" + (f", the judge's best of {sampled[8:]}"
                                                            if sampled != "sampled" else "")},
        "models": models,
    }


def _pairwise(judge, answers: list[pa.Table], instructions: dict[str, str]) -> dict[tuple[int, int], np.ndarray]:
    by_model = [{r["prompt_id"]: r for r in t.to_pylist()} for t in answers]
    common = sorted(set.intersection(*(set(m) for m in by_model)))
    out = {}
    for a in range(len(answers)):
        for b in range(a + 1, len(answers)):
            prompts, first, second, checks = [], [], [], []
            for pid in common:
                text = prompt_text(json.loads(by_model[a][pid]["messages_json"]))
                ra, rb = by_model[a][pid]["response"], by_model[b][pid]["response"]
                prompts += [text, text]
                first += [ra, rb]
                second += [rb, ra]
                checks += [instructions.get(pid) or None] * 2
            logits = np.asarray(judge.pair_logits(prompts, first, second, None, checks))
            logits = logits.reshape(-1, 2)
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
    verifiable = any(p.instructions for p in held_out)
    answers = [_answers(session, policy_weights(p, 10_000 + i), held_out, config, best_of, greedy=verifiable)
               for i, (_, p) in enumerate(models)]
    if restore.version != session.weights.version:
        session.broadcast(restore, record=False)
    session.enter("judge")  # colocated: engines asleep, every judge replica on its GPU (not beside awake engines)
    w = win_rate_matrix(_pairwise(ReplicatedJudge(session.judge_actors), answers,
                                  {p.id: p.instructions_json for p in held_out}), len(models))
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
    if verifiable:
        following = instruction_following(held_out, labels, answers, "sampled" if best_of == 1 else
                                          f"best_of_{best_of}", config)
        rd.write_json(f"{out_rel}/instruction_following.json", following)
        result["instruction_following"] = {  # the run summary's lines; the file also has per-type accuracies
            m: {d: {k: v for k, v in acc.items() if k != "per_type"} for d, acc in by_decoding.items()}
            for m, by_decoding in following["models"].items()}
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
    set_role_log_dir(rd.local_path("logs"))  # the roles' output, as in the run
    init_ray(config)
    session = Session.start(config, plan.policy_path, plan.judge_path)
    try:
        return evaluate_session(session, rd, config, held_out, models=chosen, best_of=best_of,
                                out_rel=out or ("eval" if best_of == 1 else f"eval_best_of_{best_of}"))
    finally:
        session.shutdown()
