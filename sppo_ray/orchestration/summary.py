"""Per-round and per-run summaries: computed from stage outputs, printed as tables, stored in the manifest."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["instruction_following_table", "round_data", "round_summary", "round_table", "run_table"]

_PHASES = ("generate", "judge", "dataset", "train", "broadcast")


def round_data(num_tokens: pa.ChunkedArray, judged: pa.Table) -> dict[str, Any]:
    """What a round's summary needs of its responses (their ``num_tokens`` column) and tables, so the driver can
    let go of the tables before the fit."""
    lengths = pc.list_flatten(num_tokens)
    return {
        "generated_prompts": len(num_tokens),
        "generated_tokens": int(pc.sum(lengths).as_py() or 0),
        "mean_response_tokens": float(pc.mean(lengths).as_py() or 0.0),
        "pairs_judged": int(sum(k * (k - 1) for k in judged.column("k").to_pylist())),
        "no_preference_prompts": sum(1 for r in judged.column("skipped_reason").to_pylist() if r),
    }


def round_summary(t: int, data: dict[str, Any], rd, train_metrics: list[dict[str, Any]],
                  seconds: dict[str, float], probe: str) -> dict[str, Any]:
    """``data``: :func:`round_data` of the round's responses and tables."""
    train = rd.read_parquet(f"round_{t}/train.parquet", columns=["chosen_probs_win", "chosen_probs_lose"])
    gen_stage = rd.done(t, "generate") or {}
    stage_total = sum(seconds.get(p, 0.0) for p in _PHASES)
    return {
        "round": t,
        "prompts": gen_stage.get("prompts", data["generated_prompts"]),
        "generated_prompts": data["generated_prompts"],
        "rejected": gen_stage.get("rejected", 0),
        "truncated": gen_stage.get("truncated", 0),
        "generated_tokens": data["generated_tokens"],
        "mean_response_tokens": data["mean_response_tokens"],
        "pairs_judged": data["pairs_judged"],
        "no_preference_prompts": data["no_preference_prompts"],
        "train_rows": train.num_rows,
        "win_rate_chosen": float(np.mean(train.column("chosen_probs_win").to_numpy())),
        "win_rate_rejected": float(np.mean(train.column("chosen_probs_lose").to_numpy())),
        "loss_first": train_metrics[0]["loss"] if train_metrics else None,
        "loss_last": train_metrics[-1]["loss"] if train_metrics else None,
        "step_seconds": float(np.mean([m["step_seconds"] for m in train_metrics])) if train_metrics else None,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "overhead_seconds": round(max(0.0, seconds.get("round", 0.0) - stage_total), 2),
        "probe": probe,
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def round_table(s: dict[str, Any]) -> str:
    sec = s["seconds"]
    lines = [
        f"── round {s['round']} ─────────────────────────────────────────────",
        f"  prompts {s['prompts']} (rejected {s['rejected']}, truncated {s['truncated']}),"
        f" mean response {s['mean_response_tokens']:.1f} tokens",
        f"  pairs judged {s['pairs_judged']}, training rows {s['train_rows']}"
        f" (no preference: {s['no_preference_prompts']})",
        f"  win rate chosen {s['win_rate_chosen']:.3f}  rejected {s['win_rate_rejected']:.3f}",
        f"  loss {_fmt(s['loss_first'])} -> {_fmt(s['loss_last'])}",
        "  seconds: " + ", ".join(f"{p} {sec.get(p, 0):.1f}" for p in _PHASES)
        + f", round {sec.get('round', 0):.1f} (outside stages {s['overhead_seconds']:.1f})",
        f"  probe after broadcast: {json.dumps(s['probe'])}",
    ]
    return "\n".join(lines)


def run_table(manifest: dict[str, Any]) -> str:
    rounds = [manifest["rounds"][k] for k in sorted(manifest["rounds"], key=int)]
    head = f"{'round':>5} {'prompts':>7} {'pairs':>5} {'win_w':>6} {'win_l':>6} {'loss_last':>10} {'resp_tok':>8} {'secs':>7}"
    lines = ["══ SPPO run summary ══", head]
    for s in rounds:
        lines.append(
            f"{s['round']:>5} {s['prompts']:>7} {s['train_rows']:>5} {s['win_rate_chosen']:>6.3f}"
            f" {s['win_rate_rejected']:>6.3f} {_fmt(s['loss_last']):>10} {s['mean_response_tokens']:>8.1f}"
            f" {s['seconds'].get('round', 0):>7.1f}"
        )
    ev = manifest.get("eval")
    if ev:
        lines.append("held-out win rate vs π_0 (judge): " + ", ".join(
            f"{m} {w:.3f}" for m, w in zip(ev["models"], ev["win_rate_vs_first"])))
        lines.append("held-out mean response tokens: " + ", ".join(
            f"{m} {n:.1f}" for m, n in zip(ev["models"], ev["mean_response_tokens"])))
    if ev and ev.get("instruction_following"):
        lines += instruction_following_table(ev["instruction_following"])
    return "\n".join(lines)


def instruction_following_table(following: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Lines of IFEval's accuracies per model and decoding ({model: {decoding: accuracies}})."""
    first = next(iter(next(iter(following.values())).values()))
    lines = [f"held-out instruction following ({first['prompts']} prompts, {first['instructions']} instructions;"
             " IFEval accuracy):",
             f"  {'model':<6} {'decoding':<10} {'prompt strict':>13} {'prompt loose':>12} {'instr strict':>12}"
             f" {'instr loose':>11}"]
    for model, by_decoding in following.items():
        for decoding, a in by_decoding.items():
            lines.append(f"  {model:<6} {decoding:<10} {a['prompt_strict']:>13.3f} {a['prompt_loose']:>12.3f}"
                         f" {a['instruction_strict']:>12.3f} {a['instruction_loose']:>11.3f}")
    return lines
