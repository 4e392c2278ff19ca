"""`sppo-ray report RUN_DIR`: PNG plots of a run and a Markdown summary that embeds them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

_PHASES = ("generate", "judge", "dataset", "train", "broadcast")


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rounds(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [manifest["rounds"][k] for k in sorted(manifest["rounds"], key=int)]


def _win_rates(rounds, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["round"] for r in rounds]
    ax.plot(x, [r["win_rate_chosen"] for r in rounds], "o-", label="chosen (y_w)", color="tab:green")
    ax.plot(x, [r["win_rate_rejected"] for r in rounds], "o-", label="rejected (y_l)", color="tab:red")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x)
    ax.set_xlabel("round t")
    ax.set_ylabel("mean win rate vs π_t (judge)")
    ax.set_title("Win rates of the kept responses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _train_metrics(run_dir: Path, rounds) -> list[tuple[int, list[dict[str, Any]]]]:
    """(round, rank 0's per-step metrics) for every round whose model was trained."""
    out = []
    for r in rounds:
        f = run_dir / f"round_{r['round']}" / "model" / "train_metrics.jsonl"
        out.append((r["round"], [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []))
    return out


def _losses(run_dir: Path, rounds, path: Path) -> None:
    """Loss per step, and the mean log-ratios log π/π_t of chosen and rejected against the SPPO targets."""
    plt = _plt()
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for t, metrics in _train_metrics(run_dir, rounds):
        steps = [offset + m["step"] for m in metrics]
        ax.plot(steps, [m["loss"] for m in metrics], "o-", ms=3, label=f"round {t}")
        for key, color in (("chosen", "tab:green"), ("rejected", "tab:red")):
            label = key if t == rounds[0]["round"] else None
            ax_ratio.plot(steps, [m[f"logratio_{key}"] for m in metrics], "o-", ms=3, color=color, label=label)
            targets = [m[f"target_{key}"] for m in metrics]
            if not any(math.isnan(x) for x in targets):  # DPO and IPO have no per-response target
                ax_ratio.plot(steps, targets, "--", color=color, lw=1,
                              label=f"{key} target" if label else None)
        if steps:
            ax.axvline(steps[-1] + 0.5, color="grey", lw=0.5)
            offset = steps[-1]
    for a in (ax, ax_ratio):
        a.xaxis.set_major_locator(_integer_ticks())
    ax.set_xlabel("optimiser step (all rounds)")
    ax.set_ylabel("training loss")
    ax.set_title("Loss per step")
    ax.legend()
    ax_ratio.axhline(0, color="grey", lw=0.8)
    ax_ratio.set_xlabel("optimiser step (all rounds)")
    ax_ratio.set_ylabel("mean log π(y|x) − log π_t(y|x)")
    ax_ratio.set_title("Log-ratios of the kept responses")
    ax_ratio.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stage_times(rounds, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    bottom = [0.0] * len(rounds)
    x = [r["round"] for r in rounds]
    for phase in _PHASES + ("outside stages",):
        values = [r["overhead_seconds"] if phase == "outside stages" else r["seconds"].get(phase, 0.0) for r in rounds]
        ax.bar(x, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(x)
    ax.set_xlabel("round t")
    ax.set_ylabel("seconds")
    ax.set_title("Time per stage")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lengths(rounds, manifest, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["round"] for r in rounds]
    ax.plot(x, [r["mean_response_tokens"] for r in rounds], "o-", label="training samples of π_t")
    ev = manifest.get("eval")
    if ev:
        ax.plot(range(len(ev["models"])), ev["mean_response_tokens"], "s--", label="held-out answers of π_t")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_xlabel("round t (policy π_t)")
    ax.set_ylabel("mean response length (tokens)")
    ax.set_title("Response length per round")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _instruction_following(following: dict[str, Any], path: Path) -> None:
    """Loose accuracy per instruction type against the round of the model, one panel per decoding, with the
    prompt-level accuracies (strict and loose) in black."""
    plt = _plt()
    models = list(following["models"])
    decodings = list(next(iter(following["models"].values())))
    types = sorted({t for m in following["models"].values() for d in m.values() for t in d["per_type"]})
    colors = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(decodings), figsize=(6 * len(decodings) + 3, 4.5), sharey=True, squeeze=False)
    x = list(range(len(models)))
    for ax, decoding in zip(axes[0], decodings):
        for n, iid in enumerate(types):
            ys = [following["models"][m][decoding]["per_type"].get(iid, {}).get("loose", float("nan")) for m in models]
            ax.plot(x, ys, "o-", ms=3, lw=1, color=colors(n % 20), label=iid)
        for key, style in (("prompt_loose", "s-"), ("prompt_strict", "s--")):
            ax.plot(x, [following["models"][m][decoding][key] for m in models], style, color="black", lw=2.2,
                    label=key.replace("_", "-level "))
        ax.set_xticks(x, models)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("model (π_t after t rounds)")
        ax.set_title(f"{decoding} answers, {following['prompts']} held-out prompts")
    axes[0][0].set_ylabel("accuracy (per type: loose)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Held-out instruction following per round (IFEval checks)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _instruction_following_lines(following: dict[str, Any]) -> list[str]:
    lines = ["## Held-out instruction following", "",
             f"{following['prompts']} held-out prompts with verifiable instructions (IFEval's checks; "
             "`eval/instruction_following.json` has every instruction type).", "",
             "| model | decoding | prompt strict | prompt loose | instruction strict | instruction loose |",
             "|---|---|---|---|---|---|"]
    for model, by_decoding in following["models"].items():
        for decoding, a in by_decoding.items():
            lines.append(f"| {model} | {decoding} | {a['prompt_strict']:.3f} | {a['prompt_loose']:.3f} |"
                         f" {a['instruction_strict']:.3f} | {a['instruction_loose']:.3f} |")
    return lines + ["", "![instruction following](instruction_following.png)", ""]


def write_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report/{report.md, *.png}; returns the Markdown path."""
    from sppo_ray.errors import RunStateError

    manifest_file = run_dir / "manifest.json"
    if not manifest_file.is_file():
        raise RunStateError(f"{run_dir} has no manifest.json (not a run directory, or no stage finished yet)")
    manifest = json.loads(manifest_file.read_text())
    rounds = _rounds(manifest)
    if not rounds:
        raise RunStateError(f"{run_dir}: no round has finished yet")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    _win_rates(rounds, out / "win_rates.png")
    _losses(run_dir, rounds, out / "loss.png")
    _stage_times(rounds, out / "stage_times.png")
    _lengths(rounds, manifest, out / "response_length.png")
    lines = [f"# SPPO run report: {run_dir.name}", "", "| round | prompts | rows | win rate y_w | win rate y_l |"
             " loss first → last | mean response tokens | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        loss = f"{r['loss_first']:.4g} → {r['loss_last']:.4g}" if r["loss_first"] is not None else "-"
        lines.append(f"| {r['round']} | {r['prompts']} | {r['train_rows']} | {r['win_rate_chosen']:.3f} |"
                     f" {r['win_rate_rejected']:.3f} | {loss} | {r['mean_response_tokens']:.1f} |"
                     f" {r['seconds'].get('round', 0):.0f} |")
    lines += ["", "![win rates](win_rates.png)", "", "![loss](loss.png)", "", "![time per stage](stage_times.png)",
              "", "![response length](response_length.png)", ""]
    ev = manifest.get("eval")
    if ev:
        lines += ["## Held-out evaluation", "", f"Judge: {ev['judge']}, {ev['prompts']} prompts"
                  + (f", best-of-{ev['best_of']}" if ev["best_of"] > 1 else "") + ". P(row beats column):", "",
                  "| | " + " | ".join(ev["models"]) + " |", "|---" * (len(ev["models"]) + 1) + "|"]
        for name, row in zip(ev["models"], ev["matrix"]):
            lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in row) + " |")
        if (run_dir / "eval" / "heatmap.png").is_file():
            lines += ["", "![win-rate matrix](../eval/heatmap.png)"]
    following_file = run_dir / "eval" / "instruction_following.json"
    if following_file.is_file():
        following = json.loads(following_file.read_text())
        _instruction_following(following, out / "instruction_following.png")
        lines += [""] + _instruction_following_lines(following)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"
