"""The verifier judge and verifiable prompts: IFEval's checkers (if-verifiable), the shipped prompt set, its loader
validation, the held-out split, and the instruction-following accuracies (no Ray, no model)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sppo_ray.config import ConfigError, parse_config
from sppo_ray.contracts import GeneratedPrompt
from sppo_ray.data.prompts import Prompt, PromptLoadError, load_prompts, split_prompts
from sppo_ray.instructions import (
    Check,
    Instruction,
    InstructionError,
    accuracy,
    check_response,
    evaluate_answers,
    follow_score,
    instructions_to_json,
    parse_instructions,
)
from sppo_ray.judging.judges import build_judge
from sppo_ray.judging.scoring import judge_rows
from sppo_ray.judging.verifier import VerifierJudge

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
LOWER = Instruction("change_case:english_lowercase", {})
NO_COMMA = Instruction("punctuation:no_comma", {})
UNDER_10 = Instruction("length_constraints:number_words", {"num_words": 10, "relation": "less than"})


def checks(instructions, response):
    return [(c.id, c.strict, c.loose) for c in check_response(instructions, response)]


# -- checks on hand-written responses ------------------------------------------------------------------------------

def test_lowercase_passes_and_fails():
    assert checks([LOWER], "the cat is grey and small and she likes fish.") == [(LOWER.id, True, True)]
    assert checks([LOWER], "The cat is grey and small and she likes fish.") == [(LOWER.id, False, False)]


def test_comma():
    assert checks([NO_COMMA], "No commas here at all.") == [(NO_COMMA.id, True, True)]
    assert checks([NO_COMMA], "One comma, here.") == [(NO_COMMA.id, False, False)]


def test_word_count_relation():
    nine = "one two three four five six seven eight nine"
    assert checks([UNDER_10], nine)[0][1:] == (True, True)
    assert checks([UNDER_10], nine + " ten")[0][1:] == (False, False)  # "less than 10": 10 words fail
    at_least = Instruction("length_constraints:number_words", {"num_words": 10, "relation": "at least"})
    assert checks([at_least], nine + " ten")[0][1:] == (True, True)


def test_loose_forgives_an_opening_line_strict_does_not():
    response = "Sure! Here is my note.\nhello neighbour, our grey cat is lost. please call us if you see her."
    assert checks([LOWER], response) == [(LOWER.id, False, True)]
    # loose also drops markdown asterisks: "**" around words do not count as the response's last line
    ps = Instruction("startend:end_checker", {"end_phrase": "Have a nice day."})
    assert checks([ps], "We will meet at noon. **Have a nice day.**") == [(ps.id, False, True)]


def test_empty_response_follows_nothing():
    assert checks([NO_COMMA, LOWER], "   ") == [(NO_COMMA.id, False, False), (LOWER.id, False, False)]


def test_follow_score_is_the_fraction_followed():
    c = [Check("a", True, True), Check("b", False, True), Check("c", False, False)]
    assert follow_score(c, "strict") == pytest.approx(1 / 3)
    assert follow_score(c, "loose") == pytest.approx(2 / 3)
    assert follow_score([], "loose") == 0.0
    with pytest.raises(ValueError, match="mode"):
        follow_score(c, "lenient")


def test_langdetect_verdicts_repeat():
    """The case checkers call langdetect, which is random unless seeded: the same answer must score the same."""
    short = "ok sure, see you at the park at noon"
    verdicts = {checks([LOWER], short)[0] for _ in range(20)}
    assert len(verdicts) == 1


# -- the judge ------------------------------------------------------------------------------------------------------

def _row(pid: str, responses: list[str], instructions: list[Instruction]) -> dict:
    row = GeneratedPrompt(pid, json.dumps([{"role": "user", "content": "Write a note."}]), [1], responses,
                          [[1]] * len(responses), [1] * len(responses), ["stop"] * len(responses), 0).to_row()
    return {**row, "instructions_json": instructions_to_json(instructions)}


def test_pair_logits_are_score_differences_over_tau():
    judge = VerifierJudge(tau=0.5, mode="strict")
    ins = instructions_to_json([LOWER, NO_COMMA])
    both, one, none = "all lowercase no commas.", "all lowercase, one comma.", "Capital, and a comma."
    logits = judge.pair_logits(["q"] * 3, [both, one, none], [none, both, none], instructions=[ins] * 3)
    np.testing.assert_allclose(logits, [(1 - 0) / 0.5, (0.5 - 1) / 0.5, 0.0])


def test_table_is_sigmoid_of_score_differences_and_half_on_ties():
    """Through the real table builder (debiased mode): P(i ≻ j) = σ((s_i − s_j)/τ) exactly, ½ on ties."""
    tau = 0.25
    responses = ["all lowercase no commas.",      # s = 1
                 "all lowercase, one comma.",     # s = 1/2
                 "Capital, and a comma.",         # s = 0
                 "also lowercase and no commas"]  # s = 1 (ties with 0)
    s = np.array([1.0, 0.5, 0.0, 1.0])
    (judged,) = judge_rows([_row("p", responses, [LOWER, NO_COMMA])], VerifierJudge(tau, "strict"), "debiased", "pair")
    table = np.array(judged["table"]).reshape(4, 4)
    expected = 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :]) / tau))
    np.testing.assert_allclose(table, expected, atol=1e-12)
    assert table[0, 3] == table[3, 0] == 0.5 and table[0, 1] == pytest.approx(1 / (1 + math.exp(-2)))
    assert judged["kept"] == [0, 2]  # winner: first of the tied best; loser: the one that follows nothing
    assert judged["judge"] == "verifier:strict"


def test_equal_scores_give_no_training_pair():
    (judged,) = judge_rows([_row("p", ["Caps, comma.", "More caps, comma."], [LOWER])], VerifierJudge(), "debiased",
                           "pair")
    assert judged["table"] == [0.5, 0.5, 0.5, 0.5] and judged["kept"] == [] and judged["skipped_reason"]


def test_judge_needs_instructions():
    row = _row("p", ["a", "b"], [])
    with pytest.raises(ValueError, match="instructions"):
        judge_rows([row], VerifierJudge(), "debiased", "pair")


def test_build_judge_from_config():
    cfg = parse_config({"judge": {"kind": "verifier", "tau": 0.1, "verifier_mode": "strict"}}).judge
    judge = build_judge(cfg.kind, None, cfg)
    assert isinstance(judge, VerifierJudge) and (judge.tau, judge.mode) == (0.1, "strict")
    default = parse_config({"judge": {"kind": "verifier"}}).judge
    assert (default.tau, default.verifier_mode) == (0.25, "loose")


@pytest.mark.parametrize("judge, message", [({"kind": "verifier", "table": "reference"}, "judge.table: debiased"),
                                            ({"kind": "verifier", "tau": 0}, "judge.tau"),
                                            ({"kind": "verifier", "verifier_mode": "lenient"}, "judge.verifier_mode")])
def test_config_rejects(judge, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"judge": judge})


def test_preflight_refuses_the_verifier_on_prompts_without_instructions():
    from sppo_ray.orchestration.preflight import _check_verifiable

    config = parse_config({"judge": {"kind": "verifier"}})
    with pytest.raises(PromptLoadError, match=r"needs instructions on every prompt; \d+ of \d+ .*first: p0001"):
        _check_verifiable(config, load_prompts("embedded:default"))
    _check_verifiable(config, load_prompts("embedded:verifiable"))


# -- the shipped prompt set -----------------------------------------------------------------------------------------

def test_shipped_set_size_coverage_and_ids():
    ps = load_prompts("embedded:verifiable")
    assert ps.rejects == () and len(ps.prompts) >= 400
    ids = [p.id for p in ps.prompts]
    assert len(set(ids)) == len(ids) and ids[0] == "v0001"
    assert all(1 <= len(p.instructions) <= 3 for p in ps.prompts)
    types = {i.id for p in ps.prompts for i in p.instructions}
    assert len(types) >= 10
    eval_types = {i.id for p in ps.prompts if p.split == "eval" for i in p.instructions}
    assert eval_types == types  # every type is measured on held-out prompts too
    assert {p.split for p in ps.prompts} == {"train", "eval"}


def test_shipped_instructions_build_with_their_kwargs():
    rows = [json.loads(line) for line in (REPO / "sppo_ray/data/prompts/verifiable.jsonl").read_text().splitlines()]
    for row in rows:
        built = parse_instructions(row["instructions"])  # raises, naming the instruction, if one does not build
        assert [i.kwargs for i in built] == [i["kwargs"] for i in row["instructions"]]


def test_shipped_train_and_eval_are_disjoint_tasks():
    ps = load_prompts("embedded:verifiable")

    def task(p: Prompt) -> str:  # the task sentence, before the instructions
        return p.messages[-1]["content"].split(". ")[0]

    train = [p for p in ps.prompts if p.split == "train"]
    held = [p for p in ps.prompts if p.split == "eval"]
    assert len(held) >= 50 and not {p.id for p in train} & {p.id for p in held}
    assert not {task(p) for p in train} & {task(p) for p in held}


def test_generator_script_reproduces_the_shipped_file():
    result = subprocess.run([sys.executable, str(REPO / "scripts/make_verifiable_prompts.py"), "--check"])
    assert result.returncode == 0


# -- loader validation ----------------------------------------------------------------------------------------------

def _load(tmp_path, instructions, **extra) -> tuple:
    path = tmp_path / "p.jsonl"
    good = {"id": "ok", "prompt": "Say hi.", "instructions": [{"id": "punctuation:no_comma", "kwargs": {}}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"id": "bad", "prompt": "Say hi.",
                                                           "instructions": instructions, **extra}) + "\n")
    ps = load_prompts(str(path))
    assert [p.id for p in ps.prompts] == ["ok"]
    (reject,) = ps.rejects
    assert (reject.row, reject.id) == (1, "bad")
    return reject.reason


@pytest.mark.parametrize("instructions, expected", [
    ([{"id": "punctuation:no_semicolon", "kwargs": {}}], "unknown instruction id 'punctuation:no_semicolon'"),
    ([{"id": "punctuation:no_comma", "kwargs": {"strict": True}}], "punctuation:no_comma: unknown kwarg 'strict'"),
    ([{"id": "length_constraints:number_words", "kwargs": {"num_words": 5}}],
     "length_constraints:number_words: missing kwarg 'relation'"),
    ([{"id": "length_constraints:number_words", "kwargs": {"num_words": "5", "relation": "less than"}}],
     "length_constraints:number_words: kwarg 'num_words' must be an integer"),
    ([{"id": "keywords:existence", "kwargs": {"keywords": "cat"}}],
     "keywords:existence: kwarg 'keywords' must be a non-empty list of words"),
    ([{"id": "length_constraints:number_words", "kwargs": {"num_words": 5, "relation": "more than"}}],
     "length_constraints:number_words: kwargs .* rejected by the checker: The supported relation"),
    ([{"id": "length_constraints:number_sentences", "kwargs": {"num_sentences": 2, "relation": "less than"}}],
     "length_constraints:number_sentences needs NLTK data .*punkt"),
    ([], "instructions must be a non-empty list"),
    ("punctuation:no_comma", "instructions must be a non-empty list"),
])
def test_bad_instructions_are_rejected_with_a_named_reason(tmp_path, instructions, expected):
    import re

    reason = _load(tmp_path, instructions)
    assert reason.startswith("bad instructions: ") and re.search(expected, reason), reason


def test_bad_split_is_rejected(tmp_path):
    assert "split must be 'train' or 'eval', got 'test'" in _load(
        tmp_path, [{"id": "punctuation:no_comma", "kwargs": {}}], split="test")


def test_ifeval_style_columns_are_read(tmp_path):
    row = {"key": 1, "prompt": "Say hi.", "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
           "kwargs": [{"keywords": None}, {"keywords": ["hi"], "num_words": None}]}
    path = tmp_path / "ifeval.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (p,) = load_prompts(str(path)).prompts
    assert p.instructions == (Instruction("punctuation:no_comma", {}), Instruction("keywords:existence",
                                                                                   {"keywords": ["hi"]}))


def test_instruction_errors_are_value_errors():
    with pytest.raises(InstructionError):
        parse_instructions([{"kwargs": {}}])
    assert issubclass(InstructionError, ValueError)


# -- the held-out split ---------------------------------------------------------------------------------------------

def _prompts(n_train: int, n_eval: int) -> tuple[Prompt, ...]:
    msgs = ({"role": "user", "content": "x"},)
    return tuple(Prompt(f"t{i:03d}", msgs, (), "train") for i in range(n_train)) + tuple(
        Prompt(f"e{i:03d}", msgs, (), "eval") for i in range(n_eval))


def test_marked_eval_rows_are_the_only_held_out_ones():
    rounds, held = split_prompts(_prompts(30, 10), per_iteration=8, iterations=3, eval_size=6, seed=0)
    assert len(held) == 6 and all(p.split == "eval" for p in held)
    assert [len(r) for r in rounds] == [8, 8, 8] and all(p.split == "train" for r in rounds for p in r)
    assert len({p.id for r in rounds for p in r}) == 24
    again = split_prompts(_prompts(30, 10), per_iteration=8, iterations=3, eval_size=6, seed=0)
    assert again == (rounds, held)


def test_marked_split_errors_name_the_shortfall():
    with pytest.raises(PromptLoadError, match="marks only 10 rows split: eval"):
        split_prompts(_prompts(30, 10), per_iteration=8, iterations=3, eval_size=11, seed=0)
    with pytest.raises(PromptLoadError, match="need 32 training prompts .* has 30"):
        split_prompts(_prompts(30, 10), per_iteration=8, iterations=4, eval_size=6, seed=0)


def test_unmarked_sets_split_as_before():
    plain = tuple(Prompt(f"p{i:03d}", ({"role": "user", "content": "x"},)) for i in range(20))
    rounds, held = split_prompts(plain, per_iteration=5, iterations=2, eval_size=4, seed=3)
    ordered = sorted(plain, key=lambda p: p.id)
    shuffled = [ordered[i] for i in np.random.default_rng(3).permutation(20)]
    assert held == shuffled[:4] and rounds == [shuffled[4:9], shuffled[9:14]]


# -- accuracies -----------------------------------------------------------------------------------------------------

def test_accuracy_hand_computed():
    per_prompt = [
        [Check("a", True, True), Check("b", False, True)],  # prompt: strict no, loose yes
        [Check("a", True, True)],                           # both yes
        [Check("b", False, False), Check("c", False, True)],  # both no
    ]
    acc = accuracy(per_prompt)
    assert (acc["prompts"], acc["instructions"]) == (3, 5)
    assert acc["prompt_strict"] == pytest.approx(1 / 3) and acc["prompt_loose"] == pytest.approx(2 / 3)
    assert acc["instruction_strict"] == pytest.approx(2 / 5) and acc["instruction_loose"] == pytest.approx(4 / 5)
    assert acc["per_type"] == {"a": {"count": 2, "strict": 1.0, "loose": 1.0},
                               "b": {"count": 2, "strict": 0.0, "loose": 0.5},
                               "c": {"count": 1, "strict": 0.0, "loose": 1.0}}


def test_evaluate_answers_scores_a_missing_answer_as_nothing_followed():
    instructions = {"p1": (LOWER,), "p2": (NO_COMMA, UNDER_10), "p3": ()}
    acc = evaluate_answers(instructions, {"p1": "all lowercase here.", "p3": "ignored"})
    assert (acc["prompts"], acc["instructions"]) == (2, 3)
    assert acc["prompt_strict"] == 0.5 and acc["instruction_strict"] == pytest.approx(1 / 3)


def test_instruction_following_file_content():
    from sppo_ray.orchestration.evaluate import instruction_following

    held = [Prompt("p1", ({"role": "user", "content": "x"},), (LOWER,), "eval"),
            Prompt("p2", ({"role": "user", "content": "y"},), (NO_COMMA,), "eval")]
    answers = [pa.Table.from_pylist([{"prompt_id": "p1", "response": "Upper", "greedy_response": "lower case"},
                                     {"prompt_id": "p2", "response": "a, b", "greedy_response": "a, b"}]),
               pa.Table.from_pylist([{"prompt_id": "p1", "response": "this answer is written in lowercase",
                                      "greedy_response": "lower case"},
                                     {"prompt_id": "p2", "response": "a b", "greedy_response": "a b"}])]
    out = instruction_following(held, ["pi_0", "pi_1"], answers, "sampled", parse_config({}))
    assert out["prompts"] == 2 and set(out["decoding"]) == {"greedy", "sampled"}
    assert out["models"]["pi_0"]["greedy"]["prompt_loose"] == 0.5 and out["models"]["pi_0"]["sampled"]["prompt_loose"] == 0
    assert out["models"]["pi_1"]["greedy"]["prompt_strict"] == 1.0
    assert out["models"]["pi_1"]["sampled"]["per_type"][LOWER.id] == {"count": 1, "strict": 1.0, "loose": 1.0}


def _following() -> dict:
    def acc(x: float) -> dict:
        return {"prompts": 4, "instructions": 6, "prompt_strict": x / 2, "prompt_loose": x,
                "instruction_strict": x, "instruction_loose": x,
                "per_type": {LOWER.id: {"count": 3, "strict": x, "loose": x},
                             NO_COMMA.id: {"count": 3, "strict": x / 3, "loose": x / 2}}}

    return {"prompts": 4, "decoding": {"greedy": "t0", "sampled": "t0.7"},
            "models": {"pi_0": {"greedy": acc(0.25), "sampled": acc(0.0)},
                       "pi_1": {"greedy": acc(0.5), "sampled": acc(0.25)}}}


def test_run_summary_prints_the_accuracies():
    from sppo_ray.orchestration.summary import instruction_following_table

    compact = {m: {d: {k: v for k, v in a.items() if k != "per_type"} for d, a in by.items()}
               for m, by in _following()["models"].items()}
    lines = instruction_following_table(compact)
    assert "4 prompts, 6 instructions" in lines[0]
    assert lines[2].split() == ["pi_0", "greedy", "0.125", "0.250", "0.250", "0.250"]
    assert len(lines) == 2 + 4


def test_report_plots_accuracy_per_round_and_type(tmp_path):
    from sppo_ray.report import write_report

    rounds = {str(t): {"round": t, "prompts": 4, "train_rows": 4, "win_rate_chosen": 0.7, "win_rate_rejected": 0.3,
                       "loss_first": 1.0, "loss_last": 0.5, "mean_response_tokens": 20.0,
                       "seconds": {"round": 10.0}, "overhead_seconds": 1.0} for t in range(2)}
    (tmp_path / "manifest.json").write_text(json.dumps({"rounds": rounds}))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "instruction_following.json").write_text(json.dumps(_following()))
    report = write_report(tmp_path)
    png = tmp_path / "report" / "instruction_following.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    text = report.read_text()
    assert "| pi_1 | greedy | 0.250 | 0.500 | 0.500 | 0.500 |" in text and "instruction_following.png" in text


_FIRST_CALLS_AT_ONCE = """
import threading
from sppo_ray.instructions import Instruction, check_response

ins, verdicts = (Instruction("change_case:english_lowercase", {}),), []
start = threading.Barrier(8)

def judge():
    start.wait()
    verdicts.append(check_response(ins, "our grey cat is lost, we miss her")[0].strict)

threads = [threading.Thread(target=judge) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(sum(verdicts), len(verdicts))
"""


def test_a_process_first_calls_at_once_all_detect_english():
    # a judge actor takes several calls at once; langdetect loads its language profiles on the first detect, and
    # a call that came in while they loaded judged this lowercase English answer as another language (CI, stop 32)
    for _ in range(3):  # each a fresh process: the profiles load once per process
        out = subprocess.run([sys.executable, "-c", _FIRST_CALLS_AT_ONCE], capture_output=True, text=True,
                             timeout=120, check=True)
        assert out.stdout.split() == ["8", "8"], out.stdout
