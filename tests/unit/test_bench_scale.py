"""The pure parts of `sppo-ray bench scale`: its prompts, its linearity figure and its driver extrapolation."""

from __future__ import annotations

import mmap

import pytest

from sppo_ray.bench.scale import (driver_growth_slope, growth_by_stage, linearity, paper_round_driver_bytes,
                                  scale_prompts, scale_table, stage_windows)
from sppo_ray.data.prompts import Prompt

pytestmark = pytest.mark.unit


def _base(n: int) -> list[Prompt]:
    return [Prompt(f"p{i}", ({"role": "system", "content": "be brief"}, {"role": "user", "content": f"q{i}"}))
            for i in range(n)]


def test_scaled_prompts_are_distinct_in_id_and_text_and_keep_the_base_first():
    prompts = scale_prompts(_base(3), 8)
    assert [p.id for p in prompts[:3]] == ["p0", "p1", "p2"] and prompts[3].id == "p0~1" and prompts[7].id == "p1~2"
    assert len({p.id for p in prompts}) == 8
    assert len({p.messages[-1]["content"] for p in prompts}) == 8  # no prefix cache can make a copy free
    assert prompts[7].messages[-1]["content"] == "(2) q1" and prompts[7].messages[0] == {"role": "system",
                                                                                      "content": "be brief"}
    with pytest.raises(ValueError):
        scale_prompts([], 4)


def _size(n: int, gen_s: float, train_s: float) -> dict:
    return {"prompts": n, "seconds_per_1k_prompts": {"generate": gen_s * 1000 / n, "train": train_s * 1000 / n,
                                                     "judge": 0.0}}


def test_linearity_is_the_largest_sizes_cost_per_prompt_over_the_smallest():
    ratios = linearity({"5000": _size(5000, 500.0, 1200.0), "1000": _size(1000, 100.0, 200.0)})
    assert ratios["generate"] == pytest.approx(1.0) and ratios["train"] == pytest.approx(1.2)
    assert "judge" not in ratios  # a stage that took no time has no ratio


def _measured(growth: int) -> dict:
    pipeline = {"mean_response_tokens": 16.0, "arrow_bytes": {"responses": 4_000_000, "tables": 1_000_000},
                "arrow_bytes_held": 5_000_000, "driver_growth": growth, "seconds": {"generate": 10.0, "judge": 1.0,
                "train": 20.0, "round": 32.0}, "object_store_peak": None,
                "parquet_bytes": {"responses": 2**20, "tables": 2**19, "train": 2**20}}
    return {"prompts": 1000, "pipeline": pipeline, "ratio_pipeline_over_bare_generation": 0.97,
            "seconds_per_1k_prompts": {"generate": 10.0, "judge": 1.0, "train": 20.0, "round": 32.0}}


def test_the_paper_round_scales_responses_by_tokens_and_tables_by_prompts_only():
    est = paper_round_driver_bytes(_measured(growth=10_000_000), k=5)
    tables = 1_000_000 * 20
    assert est["arrow_bytes"] == pytest.approx(4_000_000 * 20 * 450 / 16 + tables)
    # the driver holds the judge's tables only; the 9 MB it grew beyond them is a fixed overhead, not a factor
    assert est["fixed_overhead_bytes"] == 9_000_000 and est["driver_growth_bytes"] == pytest.approx(tables + 9e6)
    # a driver that grew less than the tables it holds is not extrapolated below them
    assert paper_round_driver_bytes(_measured(growth=1_000), k=5)["driver_growth_bytes"] == pytest.approx(tables)
    line = scale_table({"sizes": {"1000": _measured(0)}, "paper_round_driver_bytes": est})
    assert "extrapolated: +28 MB against the round's 2165 MB of responses and tables" in line


def test_the_drivers_growth_per_table_byte_leaves_out_what_every_size_pays_alike():
    small, large = _measured(growth=15_000_000), _measured(growth=27_000_000)
    large["prompts"], large["pipeline"]["arrow_bytes_held"] = 5000, 13_000_000
    # 12 MB more growth for 8 MB more tables: the 10 MB both sizes pay beyond their tables is no part of it
    assert driver_growth_slope({"5000": large, "1000": small}) == pytest.approx(1.5)
    assert driver_growth_slope({"1000": small}) is None
    result = {"sizes": {"1000": small, "5000": large}, "driver_growth_per_table_byte": 1.5}
    assert "driver growth per MB more of the round's tables, smallest size to largest: 1.50 MB" in scale_table(result)


def test_the_table_has_a_row_per_size_in_order():
    table = scale_table({"sizes": {"2000": {**_measured(0), "prompts": 2000}, "1000": _measured(0)}}).splitlines()
    assert table[0].count("|") == table[1].count("|") == table[2].count("|")
    assert table[2].startswith("| 1,000 |") and table[3].startswith("| 2,000 |") and "| n/a |" in table[2]
    assert "| 0.97 | n/a/0 (4.8) |" in table[2]  # an older run's JSON: no own-memory figure


def test_the_drivers_own_memory_is_its_rss_less_the_pages_it_shares_and_the_table_shows_both():
    from sppo_ray.bench.scale import private_rss
    from sppo_ray.runtime import process_rss

    before = private_rss()
    assert 0 < before < process_rss()  # the interpreter's own code pages are shared
    # 64 MB of this process's own pages, fresh from the kernel: an allocation through malloc may reuse pages a
    # test before this one freed and that are still resident (CI's full run), and then nothing grows
    block = mmap.mmap(-1, 64 * 2**20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for page in range(0, len(block), mmap.PAGESIZE):
        block[page] = 1  # one byte a page makes the page resident
    assert private_rss() - before >= 60 * 2**20
    block.close()
    measured = _measured(3 * 2**20)
    measured["pipeline"].update(driver_private_growth=2 * 2**20,
                                driver_private_growth_by_stage={"generate": 2**20, "judge": 2 * 2**20})
    table = scale_table({"sizes": {"1000": measured}})
    assert "| 0.97 | 2/3 (4.8) |" in table
    assert "driver's own memory +MB by stage at 1,000 prompts: generate 1, judge 2" in table


def test_the_drivers_growth_is_split_at_the_moments_the_driver_entered_each_stage():
    series = [(0.5, 110), (1.5, 130), (2.5, 120), (3.5, 190), (9.0, 100)]
    # generate [0, 2.2): its end (the 2.5-s sample is after judging began) stays out of it; judge [2.2, 3.0);
    # dataset [3.0, 3.0) (no sample: the level it started at); train [3.0, 9.5)
    windows = stage_windows([("generate", 0.0), ("judge", 2.2), ("dataset", 3.0), ("train", 3.0)], end=9.5)
    assert windows == {"generate": (0.0, 2.2), "judge": (2.2, 3.0), "dataset": (3.0, 3.0), "train": (3.0, 9.5)}
    by_stage = growth_by_stage(series, 100, windows)
    assert by_stage == {"generate": 30, "judge": 30, "dataset": 20, "train": 90}
    # a stage's memory is its own: generation's end at 1.9 s is not judging's
    late = growth_by_stage([(0.5, 110), (1.9, 160), (2.5, 120)], 100, stage_windows(
        [("generate", 0.0), ("judge", 2.2)], end=3.0))
    assert late == {"generate": 60, "judge": 60}  # judging starts at the level generation left (1.9 s)
    assert growth_by_stage([(0.5, 110), (1.9, 160), (2.1, 105), (2.5, 120)], 100, stage_windows(
        [("generate", 0.0), ("judge", 2.0)], end=3.0)) == {"generate": 60, "judge": 60}
    in_mb = {stage: b * 2**20 for stage, b in by_stage.items()}
    measured = _measured(0)
    measured["pipeline"].update(driver_growth_by_stage=in_mb, driver_rss_before=700 * 2**20)
    table = scale_table({"sizes": {"1000": measured}})
    assert ("driver +MB by stage at 1,000 prompts: generate 30, judge 30, dataset 20, train 90 (RSS at the round's "
            "start 700 MB)") in table


def test_the_dataset_stage_measured_at_the_papers_shape_adds_to_the_extrapolation():
    est = paper_round_driver_bytes(_measured(growth=10_000_000), k=5, dataset_stage_bytes=7_000_000)
    assert est["driver_growth_bytes"] == pytest.approx(est["tables_bytes"] + 9e6 + 7e6)
    dataset = {"prompts": 20_000, "k": 5, "response_tokens": 450, "tables_arrow_bytes": 300 * 2**20,
               "generation_growth_bytes": 30 * 2**20, "generation_seconds": 2.5,
               "growth_bytes": 12 * 2**20, "seconds": 3.25}
    dataset.update(fit_input_bytes=80 * 2**20, train_arrow_bytes=310 * 2**20)
    table = scale_table({"sizes": {"1000": _measured(0)}, "paper_round_dataset_stage": dataset})
    assert ("the driver's own work alone at 20,000 prompts × 5 answers of 450 tokens (synthetic tables of 300 MB): "
            "driver +30 MB spooling and assembling the responses (2.5 s), +12 MB in the dataset stage, 3.2 s; the "
            "fit's input 80 MB (the whole training set 310 MB), read by the driver") in table
    dataset["driver_reads_fit_input"] = False
    assert "the fit's input 80 MB (the whole training set 310 MB), read by Ray Data's tasks, not the driver" in \
        scale_table({"sizes": {"1000": _measured(0)}, "paper_round_dataset_stage": dataset})


def test_the_largest_of_the_drivers_stages_at_the_paper_shape_counts_on_top_of_the_tables():
    def growth(**stages):
        return paper_round_driver_bytes(_measured(growth=10_000_000), k=5, **stages)["driver_growth_bytes"]

    tables = 1_000_000 * 20
    assert growth(dataset_stage_bytes=7e6, fit_input_bytes=3e6) == pytest.approx(tables + 9e6 + 7e6)
    assert growth(dataset_stage_bytes=7e6, fit_input_bytes=8e7) == pytest.approx(tables + 9e6 + 8e7)
    assert growth(dataset_stage_bytes=7e6, generation_stage_bytes=5e7) == pytest.approx(tables + 9e6 + 5e7)


def test_the_dataset_stage_measurement_builds_every_prompts_pair_from_synthetic_tables():
    from sppo_ray.bench.paper_round import measure_dataset_stage

    got = measure_dataset_stage(prompts=200, k=5, response_tokens=45)
    assert got["train_rows"] == 200  # every synthetic prompt has a (winner, loser)
    # 200 × 5 answers × 45 token ids of 4 bytes, and their text, are in the tables the stage reads
    assert got["tables_arrow_bytes"] > 200 * 5 * 45 * (4 + 4)
    assert got["parquet_bytes"]["train"] > 0 and got["parquet_bytes"]["train_trl"] > 0 and got["growth_bytes"] >= 0
    assert got["generation_growth_bytes"] >= 0 and got["generation_seconds"] > 0
    # the fit reads the token ids and probabilities, not every answer's text: a fraction of the training set
    assert 200 * 2 * 45 * 4 < got["fit_input_bytes"] < got["train_arrow_bytes"] / 2
    assert got["driver_reads_fit_input"]  # a small train.parquet is read by the driver itself


def test_the_generation_stages_cpu_is_the_engines_and_the_rest_of_the_machines_between_its_edges():
    # (t, machine busy, engines); generate is [0, 2), judge [2, 3)
    samples = [(0.0, 100.0, 10.0), (1.0, 101.5, 11.0), (2.0, 103.0, 12.0), (2.5, 104.0, 12.0), (3.0, 104.5, 12.0)]
    seconds = stage_windows([("generate", 0.0), ("judge", 2.0)], end=3.0)
    from sppo_ray.bench.scale import stage_cpu

    assert stage_cpu(samples, seconds, "generate") == {"engine": 2.0, "rest": 1.0}
    assert stage_cpu(samples, seconds, "judge") == {"engine": 0.0, "rest": 1.5}
    with pytest.raises(ValueError):
        stage_cpu(samples, seconds, "sleep")


def _run(tokens_per_s: float, seconds: float, engine: float, rest: float) -> dict:
    return {"tokens": tokens_per_s * seconds, "seconds": seconds, "tokens_per_s": tokens_per_s,
            "cpu_seconds": {"engine": engine, "rest": rest}}


def test_the_pipeline_over_bare_figure_is_the_median_pairs_and_a_missing_pair_is_refused():
    from sppo_ray.bench.scale import pair_ratios

    pipeline = [_run(900, 10, 18, 2), _run(1000, 9, 17, 2), _run(1100, 8, 16, 2)]
    bare = [_run(1000, 9, 17, 1), _run(800, 11, 19, 1), _run(1000, 8, 16, 1)]
    got = pair_ratios(pipeline, bare)
    assert got["ratios"] == pytest.approx([0.9, 1.25, 1.1]) and got["ratio"] == pytest.approx(1.1)
    with pytest.raises(ValueError, match="2 pipeline runs against 3 bare"):
        pair_ratios(pipeline[:2], bare)
    with pytest.raises(ValueError):
        pair_ratios([], [])


def test_the_table_shows_each_pair_and_where_the_generations_cpu_went():
    from sppo_ray.bench.scale import pair_ratios

    measured = _measured(0)
    measured["pipeline"]["generate_cpu_seconds"] = {"engine": 19.0, "rest": 3.25}
    runs = {"pipeline": [_run(950, 10.0, 18.0, 2.0), _run(1000, 9.0, 17.0, 3.0)],
            "bare": [_run(1000, 9.5, 18.0, 1.0), _run(1000, 9.7, 18.5, 1.5)]}
    measured["bare_generation"] = {**runs, **pair_ratios(runs["pipeline"], runs["bare"]), "tokens_per_s": 1000.0}
    measured["pipeline_generation_tokens_per_s"] = 930.0
    measured["ratio_round_generation_over_bare"] = 0.93
    table = scale_table({"sizes": {"1000": measured}})
    assert ("generation / bare engine in pairs at 1,000 prompts: 0.95, 1.00 (median 0.97); the round's own stage "
            "930 tokens/s over the pairs' bare mean 1,000: 0.93") in table
    assert ("CPU s while generating at 1,000 prompts: the round's stage 10.0 s wall, engine process 19.0 + rest of "
            "the machine 3.2; in pairs (means), the stage alone 9.5 s wall, engine 17.5 + rest 2.5, the bare engine "
            "9.6 s wall, engine 18.2 + rest 1.2") in table
    # an older run's JSON (a bare engine before and after the round) still renders, without the pairs' lines
    measured["bare_generation"] = {"before": {"seconds": 9.5}, "after": {"seconds": 9.7}}
    assert "in pairs" not in scale_table({"sizes": {"1000": measured}})


def test_several_rounds_in_one_session_print_the_drivers_rss_at_each_rounds_start():
    measured = _measured(0)
    measured["pipeline"]["driver_rss_at_round_starts"] = [410 * 2**20, 441 * 2**20, 449 * 2**20]
    assert ("driver RSS at each round's start at 1,000 prompts, one session: 410, 441, 449 MB"
            in scale_table({"sizes": {"1000": measured}}))
    measured["pipeline"]["driver_rss_at_round_starts"] = [410 * 2**20]  # one round: nothing to compare
    assert "each round's start" not in scale_table({"sizes": {"1000": measured}})


def test_processes_are_named_by_what_they_run_and_their_cpu_summed_per_name_busiest_first():
    from sppo_ray.bench.scale import cpu_by_process, process_label

    assert process_label(["ray::GeneratorActor.generate"], 7, 1) == "GeneratorActor"
    assert process_label(["ray::IDLE"], 7, 1) == "IDLE"
    assert process_label(["/venv/lib/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=x"], 7, 1) == "raylet"
    assert process_label(["/venv/bin/python", "-u", "/venv/lib/ray/dashboard/dashboard.py", "--host"], 7,
                         1) == "dashboard.py"
    assert process_label(["/venv/bin/python", "bench.py"], 7, 7) == "driver"
    before = {1: ("driver", 10.0), 2: ("IDLE", 1.0), 3: ("IDLE", 2.0), 4: ("GeneratorActor", 100.0)}
    after = {1: ("driver", 11.5), 2: ("IDLE", 1.5), 3: ("IDLE", 2.25), 4: ("GeneratorActor", 150.0),
             5: ("raylet", 0.5), 6: ("gcs_server", 0.25)}  # 5 and 6 started in between: counted from 0
    assert cpu_by_process(before, after) == [("GeneratorActor", 50.0), ("driver", 1.5), ("IDLE", 0.75),
                                             ("raylet", 0.5), ("gcs_server", 0.25)]
    assert cpu_by_process(before, after, top=2) == [("GeneratorActor", 50.0), ("driver", 1.5), ("others", 1.5)]


def test_the_table_lists_the_busiest_processes_while_generating():
    measured = _measured(0)
    measured["pipeline"]["generate_cpu_by_process"] = [("GeneratorActor", 50.0), ("driver", 1.5)]
    assert ("CPU s by process while generating at 1,000 prompts: GeneratorActor 50.0, driver 1.5"
            in scale_table({"sizes": {"1000": measured}}))


def test_the_engines_timeline_splits_a_run_into_steps_and_the_time_around_them():
    from sppo_ray.bench.scale import engine_timeline

    # one engine: the run from 10.0 to 20.0; steps 11-13, 13.5-16, 17-19.5
    one = engine_timeline([([(11.0, 13.0), (13.5, 16.0), (17.0, 19.5)], 10.0, 20.0)])
    assert one == pytest.approx({"steps": 3, "stepping": 7.0, "before_first": 1.0, "between": 1.5, "after_last": 0.5})
    # two engines: per engine (the mean); an engine that never stepped was not stepping the whole run
    two = engine_timeline([([(11.0, 13.0), (13.5, 16.0), (17.0, 19.5)], 10.0, 20.0), ([], 0.0, 10.0)])
    assert two == pytest.approx({"steps": 1.5, "stepping": 3.5, "before_first": 5.5, "between": 0.75,
                                 "after_last": 0.25})
    with pytest.raises(ValueError):
        engine_timeline([])


def _timed_run(tokens: float, seconds: float, steps: int, stepping: float, between: float = 0.0) -> dict:
    return {**_run(tokens / seconds, seconds, 1.0, 1.0),
            "engine_timeline": {"steps": steps, "stepping": stepping, "between": between, "after_last": 0.1,
                                "before_first": seconds - stepping - between - 0.1}}


def test_at_equal_step_speed_keeps_the_pipelines_time_around_the_engine_and_drops_its_slower_steps():
    from sppo_ray.bench.scale import at_equal_step_speed, pair_ratios

    bare = _timed_run(10_000, 10.0, 100, 9.5)  # 95 ms a step, 0.5 s around them
    # the same steps 10% slower and 1 s around them: 0.87 plainly, 0.95 at the bare run's step speed
    pipeline = _timed_run(10_000, 11.45, 100, 10.45, between=0.6)
    assert pair_ratios([pipeline], [bare])["ratio"] == pytest.approx(10 / 11.45)
    assert at_equal_step_speed(pipeline, bare) == pytest.approx(10 / 10.5)
    # more steps for the same tokens (emptier batches) cost the pipeline even at the same speed
    assert at_equal_step_speed(_timed_run(10_000, 11.0, 110, 10.45), bare) == pytest.approx(10 / (0.55 + 10.45))
    measured = _measured(0)
    runs = {"pipeline": [pipeline, pipeline], "bare": [bare, bare]}
    measured["bare_generation"] = {**runs, **pair_ratios(runs["pipeline"], runs["bare"]), "tokens_per_s": 1000.0,
                                   "ratios_at_equal_step_speed": [at_equal_step_speed(pipeline, bare)] * 2}
    measured["pipeline_generation_tokens_per_s"] = 930.0
    measured["ratio_round_generation_over_bare"] = 0.93
    assert ("the engine in pairs at 1,000 prompts (means): the stage alone 100 steps of 104.5 ms, not stepping 0.30 s "
            "before the first, 0.60 between steps, 0.10 after the last; the bare engine 100 steps of 95.0 ms, not "
            "stepping 0.40 s before the first, 0.00 between steps, 0.10 after the last; generation / bare at the bare "
            "run's step speed: 0.95, 0.95 (median 0.95)") in scale_table({"sizes": {"1000": measured}})


def test_generation_only_prints_each_pair_both_ratios_and_each_processs_cpu_on_both_sides():
    from sppo_ray.bench.scale import at_equal_step_speed, pair_ratios, pairs_table

    bare = _timed_run(10_000, 10.0, 100, 9.5)
    slow, fast = _timed_run(10_000, 11.45, 100, 10.45, between=0.6), _timed_run(10_000, 10.0, 100, 9.4)
    slow["cpu_by_process"], fast["cpu_by_process"] = [("driver", 1.5), ("IDLE", 1.0)], [("driver", 0.5)]
    bare["cpu_by_process"] = [("IDLE", 0.5), ("raylet", 0.25)]
    runs = {"pipeline": [slow, fast], "bare": [bare, bare]}
    paired = {**runs, **pair_ratios(runs["pipeline"], runs["bare"]),
              "ratios_at_equal_step_speed": [at_equal_step_speed(p, bare) for p in runs["pipeline"]]}
    table = pairs_table({"generation_only": True, "sizes": {"1000": {"prompts": 1000, "bare_generation": paired}}})
    assert "| 1,000 | 0.87, 1.00 | 0.94 | 0.95, 0.99 (0.97) | 10.7 / 10.0 | 1.0 / 1.0 |" in table
    # a process absent from a run counts 0 there; the busiest on both sides together first (ties by name)
    assert ("CPU s by process at 1,000 prompts, the stage alone / the bare engine (means): IDLE 0.5/0.5, "
            "driver 1.0/0.0, raylet 0.0/0.2") in table
    assert "beside the stage's Ray Data execution" not in table  # the full bench's pairs have no third run
    # with the third run of each pair: the bare engine beside the stage's execution without engine calls
    beside = [_timed_run(10_000, 10.5, 100, 10.0), _timed_run(10_000, 10.0, 100, 9.5)]
    beside[0]["cpu_seconds"]["rest"] = 2.0
    paired.update(beside_idle_stage=beside, ratios_beside_idle_stage=[10 / 10.5, 1.0], ratio_beside_idle_stage=0.976)
    table = pairs_table({"generation_only": True, "sizes": {"1000": {"prompts": 1000, "bare_generation": paired}}})
    assert ("the bare engine beside the stage's Ray Data execution without engine calls / alone at 1,000 prompts, "
            "each pair: 0.95, 1.00 (median 0.98); wall s 10.2 / 10.0, rest of the machine CPU s 1.5 / 1.0 (means)"
            ) in table
