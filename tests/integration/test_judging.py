"""Judges on real models: a tiny random PairRM through the real loading path, and the SmolLM2 LLM judge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from sppo_ray.config import JudgeConfig, ResourcesConfig
from sppo_ray.judging.judges import LLMJudge, PairRMJudge
from sppo_ray.judging.stage import build_judge_actors, build_training_table, run_judging_stage
from sppo_ray.judging.tables import debiased_table

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"


def _tiny_pairrm(path: Path) -> Path:
    """A randomly initialised DebertaV2PairRM with a small WordPiece tokenizer, saved as an HF directory."""
    from sppo_ray.tiny_models import tiny_pairrm

    texts = [json.loads(line)["prompt"] + " " + json.loads(line)["good"] for line in (DATA / "obvious_pairs.jsonl").open()]
    return tiny_pairrm(path, texts=texts)


def _tiny_llm_judge(path: Path) -> Path:
    """A randomly initialised 2-layer Llama with a small WordPiece tokenizer and a plain chat template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from sppo_ray.judging.judges import judge_prompt

    pairs = [json.loads(line) for line in (DATA / "obvious_pairs.jsonl").open()]
    texts = [judge_prompt(p["prompt"], p["good"], p["bad"])[0]["content"] + " The better response is user assistant"
             for p in pairs]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts * 3, trainers.WordPieceTrainer(vocab_size=500, special_tokens=["[PAD]", "[UNK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}assistant:{% endif %}")
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         pad_token_id=fast.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_pairrm_path(tmp_path_factory) -> Path:
    return _tiny_pairrm(tmp_path_factory.mktemp("judges") / "pairrm")


@pytest.fixture(scope="module")
def tiny_llm_path(tmp_path_factory) -> Path:
    return _tiny_llm_judge(tmp_path_factory.mktemp("judges") / "llm")


@pytest.fixture(scope="module")
def obvious_pairs() -> list[dict[str, str]]:
    return [json.loads(line) for line in (DATA / "obvious_pairs.jsonl").open()]


def test_pairrm_loads_and_swapping_candidates_flips_probability(tmp_path, obvious_pairs):
    judge = PairRMJudge(str(_tiny_pairrm(tmp_path / "pairrm")), batch_size=4, max_source=64, max_candidate=32)
    pairs = obvious_pairs[:6]
    prompts = [p["prompt"] for p in pairs]
    ab = judge.pair_logits(prompts, [p["good"] for p in pairs], [p["bad"] for p in pairs])
    ba = judge.pair_logits(prompts, [p["bad"] for p in pairs], [p["good"] for p in pairs])
    assert ab.shape == (6,) and np.all(np.isfinite(ab))
    # one forward pass per order; random weights are position-biased, so the raw logits are not antisymmetric
    assert not np.allclose(ab, -ba)
    p_good = debiased_table(np.stack([[[0, a], [b, 0]] for a, b in zip(ab, ba)]))[:, 0, 1]
    p_bad = debiased_table(np.stack([[[0, b], [a, 0]] for a, b in zip(ab, ba)]))[:, 0, 1]
    np.testing.assert_allclose(p_good + p_bad, 1.0)
    assert not np.allclose(p_good, 0.5)
    # batching and packing do not change a pair's score
    single = judge.pair_logits(prompts[:1], [pairs[0]["good"]], [pairs[0]["bad"]])
    np.testing.assert_allclose(single, ab[:1], atol=1e-4)


def test_pairrm_respects_truncation_budget(tmp_path):
    judge = PairRMJudge(str(_tiny_pairrm(tmp_path / "pairrm")), max_source=16, max_candidate=8)
    ids = judge._encode("word " * 100, "answer " * 100, "reply " * 100)
    assert len(ids) <= 16 + 2 * 8


def test_pairrm_out_of_memory_splits_to_the_same_logits(tmp_path, obvious_pairs, monkeypatch):
    import torch

    judge = PairRMJudge(str(_tiny_pairrm(tmp_path / "pairrm")), batch_size=8, max_source=64, max_candidate=32)
    pairs = obvious_pairs[:8]
    args = ([p["prompt"] for p in pairs], [p["good"] for p in pairs], [p["bad"] for p in pairs])
    expected = judge.pair_logits(*args)
    real, rows_seen = judge.model.forward, []

    def tight_memory(input_ids, **kw):  # a GPU that holds 2 pairs at a time
        rows_seen.append(input_ids.shape[0])
        if input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(input_ids=input_ids, **kw)

    monkeypatch.setattr(judge.model, "forward", tight_memory)
    assert judge.pair_logits(*args) == pytest.approx(expected, abs=1e-5)
    assert rows_seen == [8, 4, 2, 2, 4, 2, 2]  # halves until they fit


def test_pairrm_in_bfloat16_runs_and_agrees_with_float32(tmp_path, obvious_pairs):
    path = _tiny_pairrm(tmp_path / "pairrm")
    pairs = obvious_pairs[:6]
    args = ([p["prompt"] for p in pairs], [p["good"] for p in pairs], [p["bad"] for p in pairs])
    fp32 = PairRMJudge(str(path), max_source=64, max_candidate=32).pair_logits(*args)
    bf16 = PairRMJudge(str(path), max_source=64, max_candidate=32, dtype="bfloat16").pair_logits(*args)
    assert bf16.dtype == np.float64 and np.isfinite(bf16).all()
    assert bf16 == pytest.approx(fp32, abs=0.05)


def _pair_args(pairs: list[dict[str, str]]) -> tuple[list[str], list[str], list[str]]:
    return [p["prompt"] for p in pairs], [p["good"] for p in pairs], [p["bad"] for p in pairs]


def _spy_forward(judge, fail_above: int | None = None) -> list[tuple[int, int]]:
    """Record (rows, width) of every forward of ``judge``; raise CUDA OOM above ``fail_above`` rows (a small GPU)."""
    import torch

    real, seen = judge.model.forward, []

    def forward(input_ids, **kw):
        seen.append(tuple(input_ids.shape))
        if fail_above is not None and input_ids.shape[0] > fail_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(input_ids=input_ids, **kw)

    judge.model.forward = forward  # an instance attribute: this judge object only
    return seen


def test_llm_judge_out_of_memory_splits_to_the_same_logits(tiny_llm_path, obvious_pairs, caplog):
    judge = LLMJudge(str(tiny_llm_path), batch_size=8)
    args = _pair_args(obvious_pairs[:8])
    expected = judge.pair_logits(*args)
    seen = _spy_forward(judge, fail_above=2)
    with caplog.at_level("WARNING", logger="sppo_ray.judging.batching"):
        got = judge.pair_logits(*args)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # same values, same order as the unsplit batch
    assert [rows for rows, _ in seen] == [8, 4, 2, 2, 4, 2, 2]
    assert [r.getMessage().split(";")[0] for r in caplog.records][:1] == [
        f"judge batch of 8 pairs (longest {seen[0][1]} tokens) ran out of memory"]
    assert len(caplog.records) == 3  # one line per split: 8 -> 4 + 4, then each 4 -> 2 + 2


def test_single_pair_out_of_memory_names_its_length_and_the_keys(tiny_pairrm_path, obvious_pairs):
    from sppo_ray.judging.batching import JudgeOutOfMemory

    judge = PairRMJudge(str(tiny_pairrm_path), max_source=64, max_candidate=32)
    args = _pair_args(obvious_pairs[:3])
    tokens = max(len(judge._encode(*pair)) for pair in zip(*args))
    _spy_forward(judge, fail_above=0)
    with pytest.raises(JudgeOutOfMemory, match=rf"pair of {tokens} tokens.*judge.max_source_tokens.*max_batch_tokens"):
        judge.pair_logits(*args)


def test_llm_judge_keeps_only_the_answer_logits(tiny_llm_path, obvious_pairs):
    judge = LLMJudge(str(tiny_llm_path), batch_size=4)
    assert judge.forward_kwargs == {"logits_to_keep": 1}
    args = _pair_args(obvious_pairs[:6])
    kept = judge.pair_logits(*args)
    judge.forward_kwargs = {}  # every position's logits, as before
    np.testing.assert_allclose(judge.pair_logits(*args), kept, atol=1e-6)


def test_llm_judge_in_bfloat16_runs_and_agrees_with_float32(tiny_llm_path, obvious_pairs):
    import torch

    args = _pair_args(obvious_pairs[:8])
    fp32 = LLMJudge(str(tiny_llm_path), batch_size=4).pair_logits(*args)
    judge = LLMJudge(str(tiny_llm_path), batch_size=4, dtype="bfloat16")
    assert judge.model.dtype == torch.bfloat16
    bf16 = judge.pair_logits(*args)
    assert bf16.dtype == np.float64 and np.isfinite(bf16).all()
    np.testing.assert_allclose(bf16, fp32, atol=0.01)  # random weights: logits ~0.1, bf16 differs by ~0.002


def test_batches_respect_the_token_budget(tiny_pairrm_path, obvious_pairs):
    judge = PairRMJudge(str(tiny_pairrm_path), batch_size=8, max_source=64, max_candidate=32, max_batch_tokens=200)
    args = _pair_args(obvious_pairs)
    lengths = sorted((len(judge._encode(*pair)) for pair in zip(*args)), reverse=True)
    seen = _spy_forward(judge)
    judge.pair_logits(*args)
    assert sum(rows for rows, _ in seen) == len(lengths)
    assert all(rows * width <= 200 and rows <= 8 for rows, width in seen)
    assert [width for _, width in seen] == sorted((w for _, w in seen), reverse=True)  # longest batch first
    assert seen[0][1] == lengths[0]


def test_overlapping_calls_score_like_sequential_ones(tiny_pairrm_path, obvious_pairs):
    """Two calls in flight on one judge (as in a JudgeActor with max_concurrency 2): each gets its own row cap,
    the long texts are truncated as when alone, and forwards never overlap."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    judge = PairRMJudge(str(tiny_pairrm_path), batch_size=8, max_source=16, max_candidate=8)
    long = [(p["prompt"] * 5, p["good"] * 5, p["bad"] * 5) for p in obvious_pairs]  # every part truncated
    args = tuple(map(list, zip(*long)))
    alone = {rows: judge.pair_logits(*args, rows) for rows in (1, 8)}
    real, active, overlaps, guard = judge.model.forward, [0], [0], threading.Lock()

    def forward(**kw):
        with guard:
            active[0] += 1
            overlaps[0] += active[0] > 1
        try:
            return real(**kw)
        finally:
            with guard:
                active[0] -= 1

    judge.model.forward = forward
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(judge.pair_logits, *args, rows) for rows in (1, 8, 1, 8)]
        results = [f.result() for f in futures]
    for rows, got in zip((1, 8, 1, 8), results):
        np.testing.assert_allclose(got, alone[rows], atol=1e-6)
    assert overlaps[0] == 0 and judge.batch_size == 8


def test_judge_actor_row_cap_is_per_call(tiny_pairrm_path, obvious_pairs):
    import torch

    from sppo_ray.judging.actor import JudgeActor

    cfg = JudgeConfig(kind="pairrm", batch_size=8, max_source_tokens=64, max_candidate_tokens=32)
    # a plain object, no Ray; "cpu" is what build_judge_actors passes for judge_gpus 0
    actor = JudgeActor(str(tiny_pairrm_path), cfg, threads=torch.get_num_threads(), device="cpu")
    assert actor.judge.device == "cpu"
    seen = _spy_forward(actor.judge)
    args = _pair_args(obvious_pairs[:6])
    capped = actor.pair_logits(*args, batch_size=2)
    assert [rows for rows, _ in seen] == [2, 2, 2] and actor.judge.batch_size == 8
    np.testing.assert_allclose(actor.pair_logits(*args), capped, atol=1e-5)
    assert [rows for rows, _ in seen[3:]] == [6]


def test_llm_judge_prefers_the_right_answer_on_obvious_pairs(embedded_policy, obvious_pairs):
    judge = LLMJudge(str(embedded_policy), batch_size=8)
    prompts = [p["prompt"] for p in obvious_pairs]
    good, bad = [p["good"] for p in obvious_pairs], [p["bad"] for p in obvious_pairs]
    good_first = judge.pair_logits(prompts, good, bad)
    bad_first = judge.pair_logits(prompts, bad, good)
    p_good = debiased_table(np.stack([[[0, a], [b, 0]] for a, b in zip(good_first, bad_first)]))[:, 0, 1]
    accuracy = float(np.mean(p_good > 0.5))
    print(f"LLM judge (SmolLM2-135M) accuracy on {len(p_good)} obvious pairs: {accuracy:.3f}; "
          f"mean P(good) {p_good.mean():.3f}; raw 'A' preference {np.mean(good_first > 0):.2f}/{np.mean(bad_first > 0):.2f}")
    assert accuracy > 0.5


def test_judging_stage_writes_training_set(ray_cluster, tmp_path):
    import pyarrow as pa

    from sppo_ray.generation.stage import GENERATION_SCHEMA

    rows = []
    for n in range(5):
        responses = ["short", "a bit longer answer", "the longest answer of all three here"]
        rows.append({"prompt_id": f"p{n}", "messages_json": json.dumps([{"role": "user", "content": f"q{n}"}]),
                     "prompt_token_ids": [1, 2, 3], "responses": responses,
                     "response_token_ids": [[4], [5, 6], [7, 8, 9]], "num_tokens": [1, 2, 3],
                     "finish_reasons": ["stop"] * 3, "policy_version": 2, "truncated": False})
    generated = pa.Table.from_pylist(rows, schema=GENERATION_SCHEMA)
    cfg = JudgeConfig(kind="length", batch_size=4)
    actors = build_judge_actors(None, cfg, ResourcesConfig(judges=2, judge_cpus=0.5))
    try:
        judged = run_judging_stage(generated, actors, cfg)
    finally:
        for a in actors:
            ray.kill(a)
    assert judged.pairs == 5 * 6
    assert judged.table.column("prompt_id").to_pylist() == [f"p{n}" for n in range(5)]
    table = build_training_table(generated, judged.table)
    pq.write_table(table, tmp_path / "train.parquet")
    back = pq.read_table(tmp_path / "train.parquet")
    assert back.num_rows == 5
    row = back.to_pylist()[0]
    assert row["chosen"][-1] == {"content": "short", "role": "assistant"}
    assert row["rejected"][-1]["content"].startswith("the longest")
    assert row["chosen_probs_win"] > 0.5 > row["chosen_probs_lose"]
    assert 0.5 < row["chosen_probs"] <= 1.0 and row["policy_version"] == 2


def test_judging_stage_with_pairrm_equals_a_local_judge(ray_cluster, tiny_pairrm_path, obvious_pairs):
    """Three batches through one PairRM actor taking two at a time give the tables of an in-process judge."""
    import pyarrow as pa

    from sppo_ray.actor_pool import shutdown_pool
    from sppo_ray.generation.stage import GENERATION_SCHEMA
    from sppo_ray.judging.scoring import judge_rows

    rows = []
    for n, pair in enumerate(obvious_pairs[:6]):
        responses = [pair["good"], pair["bad"], pair["good"] + " " + pair["bad"]]
        rows.append({"prompt_id": f"p{n}", "messages_json": json.dumps([{"role": "user", "content": pair["prompt"]}]),
                     "prompt_token_ids": [1], "responses": responses, "response_token_ids": [[2], [3], [4]],
                     "num_tokens": [1, 1, 1], "finish_reasons": ["stop"] * 3, "policy_version": 0, "truncated": False})
    generated = pa.Table.from_pylist(rows, schema=GENERATION_SCHEMA)
    # 4 x 4 // 6 = 2 prompts per stage batch: 3 batches, two in flight on the one actor
    cfg = JudgeConfig(kind="pairrm", batch_size=4, max_source_tokens=64, max_candidate_tokens=32)
    actors = build_judge_actors(str(tiny_pairrm_path), cfg, ResourcesConfig(judges=1, judge_cpus=0.5))
    try:
        judged = run_judging_stage(generated, actors, cfg)
    finally:
        shutdown_pool(actors)
    local = PairRMJudge(str(tiny_pairrm_path), batch_size=4, max_source=64, max_candidate=32)
    expected = judge_rows(generated.to_pylist(), local, cfg.table, cfg.selection)
    assert judged.pairs == 6 * 6
    for got, want in zip(judged.table.to_pylist(), expected):
        assert got["prompt_id"] == want["prompt_id"] and got["kept"] == want["kept"]
        np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5)


def test_replicated_judge_spreads_a_call_over_every_replica_in_order(ray_cluster, obvious_pairs):
    """The evaluation's judge: one call cut into a slice per replica, the logits back in the caller's order."""
    from sppo_ray.judging.judges import LengthJudge
    from sppo_ray.judging.stage import ReplicatedJudge

    cfg = JudgeConfig(kind="length")
    actors = build_judge_actors(None, cfg, ResourcesConfig(judges=3, train_workers=3), None)
    prompts = [p["prompt"] for p in obvious_pairs]
    first, second = [p["good"] for p in obvious_pairs], [p["bad"] for p in obvious_pairs]
    try:
        got = ReplicatedJudge(actors).pair_logits(prompts, first, second)
    finally:
        for a in actors:
            ray.kill(a)
    assert got.tolist() == LengthJudge("shorter").pair_logits(prompts, first, second).tolist()
    assert len(got) == len(obvious_pairs) > 3


def test_an_interrupted_judging_resumes_with_the_prompts_no_chunk_holds(ray_cluster, tmp_path, monkeypatch):
    """A driver stopped after two chunks of the judging stage: the next execution judges only the other prompts,
    and writes the same tables.parquet as an uninterrupted stage."""
    import pyarrow as pa

    from sppo_ray.config import parse_config
    from sppo_ray.generation.stage import GENERATION_SCHEMA
    from sppo_ray.orchestration import driver
    from sppo_ray.orchestration.chunks import StageChunks
    from sppo_ray.orchestration.rundir import RunDir
    from sppo_ray.orchestration.session import Session
    from sppo_ray.row_files import ParquetRows

    rows = [{"prompt_id": f"p{n}", "messages_json": json.dumps([{"role": "user", "content": f"q{n}"}]),
             "prompt_token_ids": [1], "responses": ["x" * (n % 3 + 1), "y" * (n % 5 + 2), "z" * 4],
             "response_token_ids": [[4], [5], [6]], "num_tokens": [1, 1, 1], "finish_reasons": ["stop"] * 3,
             "policy_version": 0, "truncated": False} for n in range(12)]
    generated = pa.Table.from_pylist(rows, schema=GENERATION_SCHEMA)
    config = parse_config({"judge": {"kind": "length", "batch_size": 6, "chunk_prompts": 4}})  # 4 prompts a batch
    actors = build_judge_actors(None, config.judge, ResourcesConfig(judges=1, judge_cpus=0.5))
    session = Session([], actors, Path("unused"))

    def run_dir(name: str) -> RunDir:
        rd = RunDir(str(tmp_path / name))
        rel = "round_0/responses.parquet"
        rd.record(0, "generate", outputs={rel: rd.write_parquet(rel, generated)}, seconds=0.0)
        return rd

    def responses(rd: RunDir) -> ParquetRows:  # as the driver reads them
        return ParquetRows(rd.path("round_0/responses.parquet"))

    class Killed(Exception):
        pass

    real_add, real_stage, asked = StageChunks.add, driver.run_judging_stage, []

    def add_then_die(self, rows):
        real_add(self, rows)
        if self.written == 2:
            raise Killed

    def spy(generated, *args, finished=None, **kwargs):
        asked.append(generated.num_rows - (0 if finished is None else finished.num_rows))
        return real_stage(generated, *args, finished=finished, **kwargs)

    try:
        whole_dir = run_dir("whole")
        whole = driver._judge(0, [], responses(whole_dir), session, whole_dir, config)
        rd = run_dir("cut")
        monkeypatch.setattr(StageChunks, "add", add_then_die)
        with pytest.raises(Killed):
            driver._judge(0, [], responses(rd), session, rd, config)
        assert rd.done(0, "judge") is None
        assert sum(c["rows"] for c in rd.manifest()["chunks"]["round_0/judge"]["files"]) == 8
        monkeypatch.setattr(StageChunks, "add", real_add)
        monkeypatch.setattr(driver, "run_judging_stage", spy)
        again = driver._judge(0, [], responses(rd), session, rd, config)
    finally:
        for a in actors:
            ray.kill(a)
    assert asked == [4]  # only the prompts no chunk held
    assert again.equals(whole)
    assert rd.read_bytes("round_0/tables.parquet") == whole_dir.read_bytes("round_0/tables.parquet")
    assert rd.done(0, "judge")["from_chunks"] == 8 and rd.done(0, "judge")["pairs"] == 12 * 6
    assert not rd.exists("round_0/chunks_judge") and "round_0/judge" not in rd.manifest()["chunks"]
