"""Generation stage with real vLLM engines serving the embedded SmolLM2 inside Ray actors."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time

import pytest
import ray
import torch
from safetensors.torch import load_file

from sppo_ray.config import GenerationConfig, ResourcesConfig
from sppo_ray.contracts import PolicyWeights
from sppo_ray.data.prompts import Prompt
from sppo_ray.generation.stage import build_generator_actors, push_weights, run_generation_stage

pytestmark = pytest.mark.integration

CFG = GenerationConfig(k=3, max_new_tokens=12, max_prompt_tokens=64, temperature=0.8, batch_size=4, dtype="float32")
QUESTION = [[{"role": "user", "content": "What is the capital of France?"}]]


def _prompts(n: int) -> list[Prompt]:
    topics = ["apples", "rivers", "chess", "the moon", "bread", "music", "trains", "rain", "cats", "glass"]
    return [Prompt(f"q{i}", ({"role": "user", "content": f"Tell me one fact about {topics[i % 10]}."},)) for i in range(n)]


@pytest.fixture(scope="module")
def generators(ray_cluster, embedded_policy):
    actors = build_generator_actors(str(embedded_policy), CFG, ResourcesConfig(generators=1))
    yield actors
    for a in actors:
        ray.get(a.shutdown.remote())
        ray.kill(a)


@pytest.fixture(scope="module")
def base_state(embedded_policy):
    return load_file(str(embedded_policy / "model.safetensors"))


def test_k_samples_reproducible_and_distinct(generators):
    prompts = _prompts(5)
    first = run_generation_stage(prompts, generators, PolicyWeights(0), 0, CFG)
    again = run_generation_stage(prompts, generators, PolicyWeights(0), 0, CFG)
    rows = first.table.to_pylist()
    assert [r["prompt_id"] for r in rows] == [p.id for p in prompts]
    assert all(len(r["responses"]) == 3 and len(r["response_token_ids"]) == 3 for r in rows)
    assert all(r["policy_version"] == 0 for r in rows)
    # same seeds -> same samples, whatever the batching
    assert first.table.column("responses").to_pylist() == again.table.column("responses").to_pylist()
    # K samples of one prompt are different draws, not copies
    assert sum(len(set(r["responses"])) > 1 for r in rows) >= 4
    # another round (iteration) seeds differently
    other = run_generation_stage(prompts, generators, PolicyWeights(0), 1, CFG)
    assert other.table.column("responses").to_pylist() != first.table.column("responses").to_pylist()


def test_overlong_and_empty_prompts_are_counted_not_fatal(generators):
    prompts = _prompts(2) + [
        Prompt("long", ({"role": "user", "content": "Summarise this: " + "lorem ipsum dolor " * 80},)),
        Prompt("blank", ({"role": "user", "content": "   "},)),
    ]
    result = run_generation_stage(prompts, generators, PolicyWeights(0), 0, CFG)
    ids = result.table.column("prompt_id").to_pylist()
    assert ids == ["q0", "q1", "long"]
    assert result.truncated == 1
    long_row = result.table.to_pylist()[2]
    assert long_row["truncated"] and len(long_row["prompt_token_ids"]) <= CFG.max_prompt_tokens
    assert result.rejects == [{"prompt_id": "blank", "reason": "empty prompt"}]


def test_update_weights_in_place_changes_and_restores_output(generators, base_state):
    before = ray.get(generators[0].greedy.remote(QUESTION, 16))
    g = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.ndim == 2 else v for k, v in base_state.items()}
    push_weights(generators, PolicyWeights(1, ray.put(perturbed)))
    changed = ray.get(generators[0].greedy.remote(QUESTION, 16))
    rows = run_generation_stage(_prompts(2), generators, PolicyWeights(1), 1, CFG).table.to_pylist()
    push_weights(generators, PolicyWeights(2, ray.put(base_state)))
    restored = ray.get(generators[0].greedy.remote(QUESTION, 16))
    assert "Paris" in before[0]
    assert changed != before
    assert restored == before
    assert {r["policy_version"] for r in rows} == {1}
    # the reloads' expected warnings (rotary cache, tied head) were dropped, and nothing else was warned about
    warnings = ray.get(generators[0].ready.remote())["reload_warnings"]
    assert warnings["suppressed"] >= 4 and warnings["logged"] == 0


def test_directory_and_pulled_shards_give_the_same_model(generators, base_state, tmp_path):
    """A policy directory reaches the engine read from disk, or pulled shard by shard when the node cannot see it."""
    from safetensors.torch import save_file

    from sppo_ray.generation.stage import _shard_source
    from sppo_ray.generation.weights import policy_weights

    g = torch.Generator().manual_seed(1)
    perturbed = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.ndim == 2 else v for k, v in base_state.items()}
    push_weights(generators, PolicyWeights(10, ray.put(perturbed)))
    expected = ray.get(generators[0].greedy.remote(QUESTION, 16))
    names = sorted(perturbed)  # two shards, as an export above the shard size writes them
    save_file({k: perturbed[k].contiguous() for k in names[: len(names) // 2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: perturbed[k].contiguous() for k in names[len(names) // 2 :]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    push_weights(generators, PolicyWeights(11, ray.put(base_state)))

    push_weights(generators, policy_weights(tmp_path, 12))  # same node: the engine reads the directory
    from_disk = ray.get(generators[0].greedy.remote(QUESTION, 16))
    push_weights(generators, PolicyWeights(13, ray.put(base_state)))
    unseen = dataclasses.replace(policy_weights(tmp_path, 14), path=str(tmp_path) + "-elsewhere")
    assert not ray.get(generators[0].can_read.remote(unseen.path, unseen.files))
    push_weights(generators, dataclasses.replace(unseen, shard_source=_shard_source(str(tmp_path))))
    pulled = ray.get(generators[0].greedy.remote(QUESTION, 16))
    assert from_disk == expected and pulled == expected
    with pytest.raises(FileNotFoundError, match="readable neither by every generator nor on this node"):
        push_weights(generators, dataclasses.replace(unseen, version=15))
    with pytest.raises(ray.exceptions.RayTaskError, match="not readable on this generator's node"):
        ray.get(generators[0].load_policy.remote(15, None, unseen.path, unseen.files, None))
    assert ray.get(generators[0].greedy.remote(QUESTION, 16)) == expected  # a refused update changes nothing
    push_weights(generators, PolicyWeights(16, ray.put(base_state)))


def _kill_first_generate_process(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the generator process once it is busy in `generate` (its Ray process title says so)."""
    while not stop.is_set():
        out = subprocess.run(["pgrep", "-f", "ray::GeneratorActor.generate"], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split()]
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            return
        time.sleep(0.2)


def test_killed_generator_still_yields_one_row_per_prompt(generators, base_state):
    # the restarted engine comes back holding π_0; the stage must bring it to version 3 before retrying
    weights = PolicyWeights(3, ray.put(base_state))
    push_weights(generators, weights)
    prompts = _prompts(8)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_generate_process, args=(stop, killed))
    killer.start()
    try:
        result = run_generation_stage(prompts, generators, weights, 0, CFG)
    finally:
        stop.set()
        killer.join()
    assert killed, "the generator was never seen generating"
    ids = result.table.column("prompt_id").to_pylist()
    assert sorted(ids) == sorted(p.id for p in prompts) and len(ids) == len(set(ids))
    assert set(result.table.column("policy_version").to_pylist()) == {3}
    assert ray.get(generators[0].ready.remote())["version"] == 3


def test_an_interrupted_generation_resumes_with_the_prompts_no_chunk_holds(generators, embedded_policy, base_state,
                                                                           tmp_path, monkeypatch):
    """A driver stopped after two chunks of the stage: the next execution generates only the other prompts, and
    writes the same responses.parquet as an uninterrupted stage."""
    from sppo_ray.config import parse_config
    from sppo_ray.orchestration import driver
    from sppo_ray.orchestration.chunks import StageChunks
    from sppo_ray.orchestration.rundir import RunDir
    from sppo_ray.orchestration.session import Session

    fields = ("k", "max_new_tokens", "max_prompt_tokens", "temperature", "batch_size", "dtype")
    config = parse_config({"generation": {**{f: getattr(CFG, f) for f in fields}, "chunk_prompts": 4}})
    weights = PolicyWeights(20, ray.put(base_state))  # whatever the tests before left in the engine
    push_weights(generators, weights)
    prompts = _prompts(12)
    session = Session(generators, [], embedded_policy, generator_version=0, weights=weights)  # round 0, engine at v20
    whole_dir = RunDir(str(tmp_path / "whole"))
    whole = driver._generate(0, prompts, session, whole_dir, config)

    class Killed(Exception):
        pass

    real_add = StageChunks.add

    def add_then_die(self, rows):
        real_add(self, rows)
        if self.written == 2:
            raise Killed

    monkeypatch.setattr(StageChunks, "add", add_then_die)
    rd = RunDir(str(tmp_path / "cut"))
    with pytest.raises(Killed):
        driver._generate(0, prompts, session, rd, config)
    assert rd.done(0, "generate") is None
    kept = sum(c["rows"] for c in rd.manifest()["chunks"]["round_0/generate"]["files"])
    assert kept == 8

    monkeypatch.setattr(StageChunks, "add", real_add)
    asked = []
    real_stage = driver.run_generation_stage

    def spy(prompts, *args, done=(), **kwargs):
        asked.append({p.id for p in prompts} - set(done))
        return real_stage(prompts, *args, done=done, **kwargs)

    monkeypatch.setattr(driver, "run_generation_stage", spy)
    again = driver._generate(0, prompts, session, rd, config)
    assert len(asked[0]) == 4  # only the prompts no chunk held
    assert next(again.slices(12)).equals(next(whole.slices(12)))
    assert rd.read_bytes("round_0/responses.parquet") == whole_dir.read_bytes("round_0/responses.parquet")
    assert rd.done(0, "generate")["from_chunks"] == 8
    assert not rd.exists("round_0/chunks_generate") and "round_0/generate" not in rd.manifest()["chunks"]
