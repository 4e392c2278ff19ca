"""The embedded default job (`make demo`, jobs/tiny-cpu.yaml) end to end, unchanged: the verifier judge's rounds make
SmolLM2 follow instructions on held-out tasks better, and the run says so in its summary, files and report."""

from __future__ import annotations

import json

import pytest

from e2e_helpers import REPO, cli

pytestmark = pytest.mark.e2e

MODELS = ("pi_0", "pi_1", "pi_2")


@pytest.fixture(scope="module")
def demo_run(cli_env, tmp_path_factory) -> dict:
    """jobs/tiny-cpu.yaml as `make demo` runs it (2 rounds, all 100 held-out prompts), only in a temporary run_dir."""
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    proc = cli("run", str(REPO / "jobs" / "tiny-cpu.yaml"), "--set", f"run_dir={run_dir}", env=cli_env)
    following = json.loads((run_dir / "eval" / "instruction_following.json").read_text())
    return {"dir": run_dir, "stdout": proc.stdout, "stderr": proc.stderr, "following": following}


def test_rounds_raise_held_out_instruction_following(demo_run):
    """The learning test with the verifier judge: π_2 follows the held-out prompts' instructions (greedy, IFEval's
    loose prompt-level accuracy) more often than π_0.

    The held-out prompts are tasks no round trained on, so this fails if the verifier's preferences, the SPPO loss's
    sign, the chosen/rejected selection, the training rows or the broadcast of new weights is wrong. Measured with
    this job over seeds 0, 1, 2: +0.08, +0.03, +0.06 (BENCHMARKS.md, "The default demo"); the job's seed is 0.
    """
    models = demo_run["following"]["models"]
    greedy = {m: models[m]["greedy"]["prompt_loose"] for m in MODELS}
    print(f"held-out prompt-level loose accuracy (greedy): {greedy}")
    assert demo_run["following"]["prompts"] == 100
    assert greedy["pi_2"] > greedy["pi_0"]


def test_accuracies_are_counted_per_model_decoding_and_instruction_type(demo_run):
    models = demo_run["following"]["models"]
    assert set(models) == set(MODELS)
    for m in MODELS:
        for decoding in ("greedy", "sampled"):
            acc = models[m][decoding]
            assert acc["prompts"] == 100 and acc["instructions"] >= 100
            # loose forgives what strict does not, never the reverse
            assert acc["prompt_strict"] <= acc["prompt_loose"] and acc["instruction_strict"] <= acc["instruction_loose"]
            types = acc["per_type"]
            assert len(types) >= 10 and sum(t["count"] for t in types.values()) == acc["instructions"]


def test_summary_and_report_show_instruction_following(demo_run, cli_env):
    out = demo_run["stdout"]
    assert "held-out instruction following (100 prompts" in out
    for m in MODELS:
        assert f"  {m}   greedy" in out and f"  {m}   sampled" in out
    report = cli("report", str(demo_run["dir"]), env=cli_env)
    # what `make demo` prints after its set-up, in a pipe: the run's and the report's lines, ours only
    printed = (out + demo_run["stderr"] + report.stdout + report.stderr).splitlines()
    print(f"make demo would print {len(printed)} lines after the set-up")
    assert len(printed) <= 80, "\n".join(printed)
    png = demo_run["dir"] / "report" / "instruction_following.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "(instruction_following.png)" in (demo_run["dir"] / "report" / "report.md").read_text()
