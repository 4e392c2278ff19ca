"""Prompt loading, hygiene and splits (sppo_ray/data/prompts.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sppo_ray.data.prompts import Prompt, PromptLoadError, load_prompts, split_prompts

pytestmark = pytest.mark.unit


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_embedded_set():
    ps = load_prompts("embedded:default")
    assert len(ps.prompts) >= 300
    ids = [p.id for p in ps.prompts]
    assert len(set(ids)) == len(ids)
    assert ps.rejects == ()
    assert ps.prompts[0].id == "p0001"
    assert ps.prompts[0].messages == ({"role": "user", "content": "What is the capital of Australia?"},)


def test_unknown_embedded_set():
    with pytest.raises(PromptLoadError, match="nope"):
        load_prompts("embedded:nope")


def test_jsonl_prompt_column(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Hello?"}, {"id": "b", "prompt": "Bye?"}])
    ps = load_prompts(str(path))
    assert [p.id for p in ps.prompts] == ["a", "b"]
    assert ps.prompts[0].messages == ({"role": "user", "content": "Hello?"},)
    assert ps.source == str(path)


def test_jsonl_without_id_gets_stable_hash_id(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hello?"}])
    first = load_prompts(str(path)).prompts[0].id
    assert first.startswith("h") and len(first) == 13  # "h" + 12 hex digits
    assert load_prompts(str(path)).prompts[0].id == first


def test_jsonl_messages_ultrafeedback_style(tmp_path):
    row = {
        "prompt_id": "uf1",
        "prompt": "What is 2+2?",
        "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
        ],
    }
    multi = {
        "id": "mt",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "And now?"},
            {"role": "assistant", "content": "Now what"},
        ],
    }
    ps = load_prompts(str(write_jsonl(tmp_path / "uf.jsonl", [row, multi])))
    assert ps.prompts[0] == Prompt("uf1", ({"role": "user", "content": "What is 2+2?"},))
    # only the trailing assistant turn is dropped; the earlier turns stay
    assert ps.prompts[1].messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "And now?"},
    )


def test_parquet_prompt_column(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": ["x1", "x2", "x3"], "prompt": ["one", "two", "three"]}), path)
    ps = load_prompts(str(path))
    assert [p.id for p in ps.prompts] == ["x1", "x2", "x3"]
    assert ps.prompts[2].messages == ({"role": "user", "content": "three"},)


def test_hf_datasets_directory(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    table = pa.table({"prompt_id": ["d1", "d2"], "prompt": ["first prompt", "second prompt"]})
    with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (d / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    ps = load_prompts(str(d))
    assert [p.id for p in ps.prompts] == ["d1", "d2"]
    assert ps.prompts[1].messages == ({"role": "user", "content": "second prompt"},)


def test_directory_that_is_not_a_dataset(tmp_path):
    with pytest.raises(PromptLoadError, match="not a saved HF datasets directory"):
        load_prompts(str(tmp_path))


def test_rejects_recorded_and_good_rows_load(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"id": "g1", "prompt": "good one"},  # row 0
            {"id": "e1", "prompt": "   "},  # row 1: empty
            {"id": "g1", "prompt": "another"},  # row 2: duplicate of row 0
            '{"id": "bad", "prompt": ',  # row 3: malformed JSON
            {"id": "n1", "text": "neither field"},  # row 4
            {"id": "g2", "prompt": "good two"},  # row 5
        ],
    )
    ps = load_prompts(str(path))
    assert [p.id for p in ps.prompts] == ["g1", "g2"]
    assert ps.prompts[0].messages[0]["content"] == "good one"  # the first of the duplicates is kept
    by_row = {r.row: r for r in ps.rejects}
    assert sorted(by_row) == [1, 2, 3, 4]
    assert by_row[1].reason == "empty prompt" and by_row[1].id == "e1"
    assert "duplicate id g1" in by_row[2].reason and "row 0" in by_row[2].reason
    assert "JSON" in by_row[3].reason and by_row[3].reason.startswith("malformed row")
    assert "neither" in by_row[4].reason and by_row[4].id == "n1"
    assert all(r.stage == "load" for r in ps.rejects)


def test_messages_without_user_turn_rejected(tmp_path):
    rows = [
        {"id": "a", "messages": [{"role": "assistant", "content": "only me"}]},
        {"id": "b", "messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]},
        {"id": "c", "prompt": "fine"},
    ]
    ps = load_prompts(str(write_jsonl(tmp_path / "m.jsonl", rows)))
    assert [p.id for p in ps.prompts] == ["c"]
    reasons = {r.id: r.reason for r in ps.rejects}
    assert "no user turn" in reasons["a"]
    assert reasons["b"] == "empty prompt"


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nowhere" / "prompts.jsonl"
    with pytest.raises(PromptLoadError) as exc:
        load_prompts(str(missing))
    assert str(missing) in str(exc.value)


def test_unknown_format_and_no_usable_rows(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("hello\n")
    with pytest.raises(PromptLoadError, match="unknown format"):
        load_prompts(str(txt))
    empty = write_jsonl(tmp_path / "e.jsonl", [{"prompt": ""}])
    with pytest.raises(PromptLoadError, match="no usable prompts"):
        load_prompts(str(empty))


def _prompts(n: int) -> tuple[Prompt, ...]:
    return tuple(Prompt(f"q{i:03d}", ({"role": "user", "content": f"question {i}"},)) for i in range(n))


def _ids(rounds, held):
    return [[p.id for p in r] for r in rounds], [p.id for p in held]


def test_split_disjoint_and_sized():
    rounds, held = split_prompts(_prompts(20), per_iteration=5, iterations=3, eval_size=4, seed=0)
    r_ids, h_ids = _ids(rounds, held)
    assert [len(r) for r in r_ids] == [5, 5, 5] and len(h_ids) == 4
    all_ids = [i for r in r_ids for i in r] + h_ids
    assert len(set(all_ids)) == len(all_ids) == 19  # 3 x 5 + 4, no overlap
    for r in r_ids:
        assert not set(r) & set(h_ids)


def test_split_deterministic_and_seed_dependent():
    a = _ids(*split_prompts(_prompts(20), per_iteration=5, iterations=3, eval_size=4, seed=0))
    b = _ids(*split_prompts(_prompts(20), per_iteration=5, iterations=3, eval_size=4, seed=0))
    c = _ids(*split_prompts(_prompts(20), per_iteration=5, iterations=3, eval_size=4, seed=1))
    assert a == b
    assert a != c


def test_split_independent_of_input_order():
    ps = _prompts(20)
    a = _ids(*split_prompts(ps, per_iteration=5, iterations=2, eval_size=3, seed=7))
    b = _ids(*split_prompts(tuple(reversed(ps)), per_iteration=5, iterations=2, eval_size=3, seed=7))
    assert a == b


def test_split_too_few():
    # need = 4 held out + 3 rounds x 6 = 22 > 20
    with pytest.raises(PromptLoadError, match="need 22 prompts") as exc:
        split_prompts(_prompts(20), per_iteration=6, iterations=3, eval_size=4, seed=0)
    assert "20" in str(exc.value)
    # exactly enough is fine: 2 + 3 x 6 = 20
    rounds, held = split_prompts(_prompts(20), per_iteration=6, iterations=3, eval_size=2, seed=0)
    assert sum(map(len, rounds)) + len(held) == 20
