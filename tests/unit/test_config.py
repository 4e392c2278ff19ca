"""Config parsing, validation, overrides and `sppo-ray validate` (sppo_ray/config.py, sppo_ray/cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sppo_ray.cli import main
from sppo_ray.config import ConfigError, RunConfig, apply_overrides, load_config, parse_config

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
# run configs; runtime_env.yaml is the Ray runtime env for `ray job submit`, not a run config
JOBS = sorted(p for p in (REPO / "jobs").glob("*.yaml") if p.name != "runtime_env.yaml")


def test_jobs_exist():
    names = {p.name for p in JOBS}
    assert {"tiny-cpu.yaml", "tiny-llm-judge.yaml", "paper-llama3-8b.yaml", "paper-mistral-7b.yaml"} <= names


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_job_yaml_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    raw = yaml.safe_load(path.read_text())
    # the file's own values come through (not defaults)
    assert cfg.name == raw["name"]
    assert cfg.generation.k == raw["generation"]["k"]
    assert cfg.training.beta == raw["training"]["beta"]


def test_tiny_cpu_values():
    cfg = load_config(REPO / "jobs" / "tiny-cpu.yaml")
    assert (cfg.iterations, cfg.generation.k, cfg.training.beta) == (2, 4, 0.05)
    assert cfg.generation.dtype == "float32"
    # the default demo is judged by IFEval's checkers on the verifiable prompts; the LLM judge has its own job
    assert (cfg.judge.kind, cfg.data.prompts) == ("verifier", "embedded:verifiable")
    assert load_config(REPO / "jobs" / "tiny-llm-judge.yaml").judge.kind == "llm"
    # omitted keys take defaults
    assert cfg.generation.overlong_prompts == "truncate"


def test_defaults_are_paper_settings():
    cfg = parse_config({})
    assert cfg.generation.k == 5
    assert cfg.training.beta == 0.001
    assert cfg.iterations == 3


@pytest.mark.parametrize(
    "data, key",
    [
        ({"generation": {"kk": 3}}, "generation.kk"),
        ({"bogus": 1}, "bogus"),
        ({"generation": {"k": "many"}}, "generation.k"),
        ({"generation": {"k": 1}}, "generation.k"),
        ({"training": {"beta": 0}}, "training.beta"),
        ({"training": {"beta": -0.1}}, "training.beta"),
        ({"judge": {"kind": "oracle"}}, "judge.kind"),
        ({"generation": {"top_p": 1.5}}, "generation.top_p"),
    ],
)
def test_invalid_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert f"  {key}:" in str(exc.value)


def test_unknown_key_says_unknown():
    with pytest.raises(ConfigError, match=r"generation\.kk: unknown key"):
        parse_config({"generation": {"kk": 3}})


def test_several_errors_all_named():
    with pytest.raises(ConfigError) as exc:
        parse_config({"generation": {"k": 1}, "training": {"beta": 0}})
    assert "generation.k" in str(exc.value) and "training.beta" in str(exc.value)


def test_top_level_must_be_mapping():
    with pytest.raises(ConfigError):
        parse_config([1, 2])  # type: ignore[arg-type]


def test_global_batch_not_divisible():
    # micro_batch_size 2 x train_workers 3 = 6; 64 % 6 = 4 != 0
    data = {"training": {"global_batch_size": 64, "micro_batch_size": 2}, "resources": {"train_workers": 3}}
    with pytest.raises(ConfigError, match="global_batch_size"):
        parse_config(data)
    # 66 = 11 x 6 is fine
    data["training"]["global_batch_size"] = 66
    assert parse_config(data).training.global_batch_size == 66


def test_max_prompt_length_must_be_below_max_length():
    with pytest.raises(ConfigError, match="max_prompt_length"):
        parse_config({"training": {"max_length": 64, "max_prompt_length": 64}})


def test_apply_overrides():
    base = {"training": {"beta": 0.001}, "name": "x"}
    out = apply_overrides(base, ["training.beta=0.01", "generation.k=3", "name=run=2", "eval_at_end=false"])
    assert out["training"]["beta"] == 0.01
    assert out["generation"] == {"k": 3}  # new section created
    assert out["name"] == "run=2"  # split on the first "=" only
    assert out["eval_at_end"] is False  # YAML scalar parsing
    assert base == {"training": {"beta": 0.001}, "name": "x"}  # input not mutated


def test_apply_overrides_bad():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["training.beta"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_load_config_with_overrides():
    path = REPO / "jobs" / "tiny-cpu.yaml"
    cfg = load_config(path, ["training.beta=0.01", "generation.k=4"])
    assert cfg.training.beta == 0.01
    assert cfg.generation.k == 4
    with pytest.raises(ConfigError, match=r"generation\.k"):
        load_config(path, ["generation.k=1"])


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("generation: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty).generation.k == 5


def test_config_is_frozen():
    cfg = parse_config({})
    with pytest.raises(Exception):
        cfg.generation.k = 7  # type: ignore[misc]


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_cli_validate_shipped_jobs(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "config ok" in capsys.readouterr().out


def test_cli_validate_bad_k(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generation: {k: 1}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "generation.k" in err
    assert "Traceback" not in err


def test_cli_validate_bad_override(capsys):
    assert main(["validate", str(REPO / "jobs" / "tiny-cpu.yaml"), "--set", "training.beta"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["paper-mistral-7b.yaml", "paper-llama3-8b.yaml"])
def test_paper_configs_use_the_gpu_memory_settings(name):
    cfg = load_config(REPO / "jobs" / name)
    t = cfg.training
    assert (t.precision, t.zero_stage, t.attn_implementation) == ("bf16", 3, "sdpa")
    # the fastest training setting `sppo-ray plan` shows fitting one node of 8 x 80 GB (tests/unit/test_planning.py)
    assert (t.gradient_checkpointing, t.micro_batch_size) == (False, 4)
    assert t.export_max_shard_gb <= 5 and cfg.judge.dtype == "bfloat16"
    assert cfg.generation.enforce_eager is None  # CUDA graphs on GPUs


def test_unknown_attention_kernel_names_the_key():
    with pytest.raises(ConfigError, match=r"training.attn_implementation: .*got 'flash3'"):
        parse_config({"training": {"attn_implementation": "flash3"}})


def test_flash_attention_without_the_package_is_a_clear_error(monkeypatch):
    import importlib.util

    from sppo_ray.training.worker import check_attn_implementation

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "flash_attn" else real(n, *a))
    with pytest.raises(ValueError, match="training.attn_implementation is flash_attention_2.*pip install flash-attn"):
        check_attn_implementation("flash_attention_2")
    check_attn_implementation("sdpa")  # always available


def test_layout_defaults_to_colocated_on_gpus_only():
    assert load_config(REPO / "jobs" / "tiny-cpu.yaml").resources.placement == "disaggregated"
    gpu = load_config(REPO / "jobs" / "paper-mistral-7b.yaml")
    assert gpu.resources.placement == "colocated" and gpu.weight_transfer == "ipc"  # CUDA IPC on a shared GPU
    assert gpu.resources.train_gpu_share == pytest.approx(0.4)  # what the generator (0.5) and judge (0.1) leave
    off = load_config(REPO / "jobs" / "paper-mistral-7b.yaml", ["generation.weight_sync=files"])
    assert off.weight_transfer is None
    apart = load_config(REPO / "jobs" / "paper-mistral-7b.yaml", ["resources.layout=disaggregated"])
    assert apart.weight_transfer == "nccl"  # engines on GPUs of their own: NCCL from rank 0


@pytest.mark.parametrize("changes, message", [
    (["resources.generators=2"], r"generators must be 8 and judges at most 8 \(got generators=2, judges=8\)"),
    (["resources.tensor_parallel=2"], r"tensor_parallel must be 1 in the colocated layout"),
    (["resources.generator_gpus=0.6", "resources.judge_gpus=0.4"], r"generator_gpus \+ judge_gpus \(1\) must be above 0.5"),
    (["resources.generator_gpus=0.4"], r"\(0.5\) must be above 0.5 \(one bundle per GPU\)"),
    (["resources.judge_gpus=0"], r"all set \(a GPU per bundle shared by the roles\) or all off"),
])
def test_colocated_layout_errors_name_the_fields(changes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "jobs" / "paper-mistral-7b.yaml", changes)


def test_direct_weight_sync_needs_gpus():
    with pytest.raises(ConfigError, match="generation.weight_sync: direct needs GPU training"):
        load_config(REPO / "jobs" / "tiny-cpu.yaml", ["generation.weight_sync=direct"])


def test_prompts_longer_than_training_keeps_are_refused_naming_both_keys():
    with pytest.raises(ConfigError, match=r"generation.max_prompt_tokens \(600\) must be <= training.max_prompt_length "
                                          r"\(512\)"):
        load_config(REPO / "jobs" / "paper-mistral-7b.yaml", ["generation.max_prompt_tokens=600"])


def test_selection_all_is_refused():
    with pytest.raises(ConfigError, match="judge.selection"):
        load_config(REPO / "jobs" / "tiny-cpu.yaml", ["judge.selection=all"])


def test_colocated_engines_take_their_share_of_the_gpu():
    cfg = load_config(REPO / "jobs" / "paper-mistral-7b.yaml")
    assert cfg.generation.gpu_memory_utilization is None and cfg.engine_memory_utilization == 0.5
    assert load_config(REPO / "jobs" / "paper-mistral-7b.yaml", ["resources.layout=disaggregated"]
                       ).engine_memory_utilization == 0.85
    with pytest.raises(ConfigError, match=r"generation.gpu_memory_utilization \(0.85\) exceeds the engine's share of "
                                          r"its GPU, resources.generator_gpus \(0.5\)"):
        load_config(REPO / "jobs" / "paper-mistral-7b.yaml", ["generation.gpu_memory_utilization=0.85"])
