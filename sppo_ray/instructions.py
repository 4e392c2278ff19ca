"""Verifiable instructions (IFEval's), checked with Google's checkers as packaged in ``if-verifiable`` (no Ray).

A prompt may carry instructions such as ``change_case:english_lowercase`` or ``length_constraints:number_words``
with ``{"num_words": 30, "relation": "less than"}``. This module validates them against if-verifiable's ``ifeval``
registry, checks responses strictly and loosely exactly as IFEval defines it (if-verifiable's
``evaluate_instructions``: loose passes if any of the response, or it without its first line, last line, both, or
its asterisks, passes), and aggregates the results into IFEval's four accuracies. Nothing here reimplements a check.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "Check",
    "Instruction",
    "InstructionError",
    "accuracy",
    "check_response",
    "evaluate_answers",
    "follow_score",
    "instructions_from_json",
    "instructions_to_json",
    "parse_instructions",
]

# Kwargs that must be integers or lists of words (the checkers do not check types: a string "30" would compare
# wrongly or fail only while judging). Every other kwarg is a string.
_LIST_KWARGS = {"keywords", "forbidden_words", "key_sentences"}
_PROBE = "A short probe answer."


class InstructionError(ValueError):
    """An instruction cannot be checked; the message names the instruction id and, where it applies, the kwarg."""


@dataclass(frozen=True)
class Instruction:
    # IFEval instruction id: a key of if-verifiable's ifeval registry, e.g. "punctuation:no_comma".
    id: str
    # Keyword arguments of the checker's build_description, e.g. {"num_words": 30, "relation": "less than"}.
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Check:
    # The instruction id checked, and whether the response follows it strictly and loosely (IFEval's definitions).
    id: str
    strict: bool
    loose: bool


_REGISTRY_LOCK = threading.Lock()


def _registry() -> dict[str, Any]:
    """IFEval's instruction id -> checker class. langdetect (the case checkers) is seeded so a verdict is the same
    on every call, as its README asks: unseeded, a short answer can be detected as English one time and not the
    next, and a resumed round would judge differently. Its language profiles are loaded here, once and under a
    lock: langdetect loads them lazily on the first ``detect`` without one, so two first calls at once (a judge
    actor takes several) could detect with half the profiles loaded, English not yet among them, and a lowercase
    English answer failed ``change_case:english_lowercase``."""
    with _REGISTRY_LOCK:
        return _load_registry()


@lru_cache(maxsize=1)
def _load_registry() -> dict[str, Any]:
    import langdetect
    from langdetect.detector_factory import init_factory
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    langdetect.DetectorFactory.seed = 0
    init_factory()
    return dict(INSTRUCTION_DICT)


def _kwarg_type_error(name: str, value: Any) -> str | None:
    if name in _LIST_KWARGS:
        ok = isinstance(value, (list, tuple)) and value and all(isinstance(w, str) and w.strip() for w in value)
        return None if ok else f"must be a non-empty list of words, got {value!r}"
    integer = name.startswith("num_") or name.endswith("frequency") or name == "nth_paragraph"
    if integer:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"must be an integer, got {value!r}"
    return None if isinstance(value, str) and value.strip() else f"must be a non-empty string, got {value!r}"


def _validated(raw: Any) -> Instruction:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise InstructionError(f"an instruction must be an object with an 'id' string, got {raw!r}")
    iid, kwargs = raw["id"], raw.get("kwargs") or {}
    checker_cls = _registry().get(iid)
    if checker_cls is None:
        raise InstructionError(f"unknown instruction id {iid!r} (not in IFEval's registry)")
    if not isinstance(kwargs, dict):
        raise InstructionError(f"instruction {iid}: kwargs must be an object, got {kwargs!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # IFEval's own rows list every key, unused ones None
    checker = checker_cls(iid)
    allowed = checker.get_instruction_args_keys()
    for name, value in kwargs.items():
        if name not in allowed:
            raise InstructionError(f"instruction {iid}: unknown kwarg {name!r} (takes {allowed or 'none'})")
        if (problem := _kwarg_type_error(name, value)) is not None:
            raise InstructionError(f"instruction {iid}: kwarg {name!r} {problem}")
    for name in allowed:  # a missing kwarg is not an error to the checker: it would pick a random value instead
        if name not in kwargs:
            raise InstructionError(f"instruction {iid}: missing kwarg {name!r} (the checker would choose one at random)")
    try:
        checker.build_description(**kwargs)
        checker.check_following(_PROBE)
    except LookupError as err:  # NLTK data (punkt) that is not installed
        resource = str(err).split("Resource ")[-1].split(" ")[0] if "Resource " in str(err) else "a resource"
        raise InstructionError(f"instruction {iid} needs NLTK data {resource}, which is not installed") from None
    except Exception as err:  # noqa: BLE001 - the checkers raise ValueError, TypeError, re.error, ...
        raise InstructionError(f"instruction {iid}: kwargs {kwargs} rejected by the checker: {err}") from None
    return Instruction(iid, kwargs)


def parse_instructions(raw: Any) -> tuple[Instruction, ...]:
    """Validated instructions from a row's ``instructions`` list ([{"id": ..., "kwargs": {...}}, ...]).

    Each is built with its kwargs and run once on a probe answer, so a row that would fail while judging fails here.

    Raises:
        InstructionError: not a list, an unknown id, an unknown, missing or ill-typed kwarg, kwargs the checker
            rejects, or a checker that needs data which is not installed (NLTK's punkt).
    """
    if not isinstance(raw, (list, tuple)) or not raw:
        raise InstructionError(f"instructions must be a non-empty list, got {raw!r}")
    return tuple(_validated(item) for item in raw)


def instructions_to_json(instructions: Iterable[Instruction]) -> str:
    """The form instructions travel in between roles (a string column); "" for none."""
    items = [{"id": i.id, "kwargs": i.kwargs} for i in instructions]
    return json.dumps(items, sort_keys=True) if items else ""


def instructions_from_json(text: str | None) -> tuple[Instruction, ...]:
    return tuple(Instruction(d["id"], d["kwargs"]) for d in json.loads(text)) if text else ()


def check_response(instructions: Sequence[Instruction], response: str) -> list[Check]:
    """Whether ``response`` follows each instruction, strictly and loosely (if-verifiable's IFEval evaluation).

    An empty response follows nothing.
    """
    from if_verifiable.common import evaluate_instructions

    results, _ = evaluate_instructions(response, [i.id for i in instructions], [i.kwargs for i in instructions],
                                       "", _registry())
    if not results:  # empty response: if-verifiable returns no per-instruction results
        return [Check(i.id, False, False) for i in instructions]
    return [Check(r.instruction_id, r.strict_pass, r.loose_pass) for r in results]


def follow_score(checks: Sequence[Check], mode: str) -> float:
    """Fraction of the instructions followed, in "strict" or "loose" mode (0 for no instructions)."""
    if mode not in ("strict", "loose"):
        raise ValueError(f"unknown mode {mode!r} (use 'strict' or 'loose')")
    if not checks:
        return 0.0
    return sum(c.strict if mode == "strict" else c.loose for c in checks) / len(checks)


def accuracy(per_prompt: Sequence[Sequence[Check]]) -> dict[str, Any]:
    """IFEval's accuracies over prompts, each given as its instructions' checks.

    Returns:
        ``prompts``, ``instructions`` (counts); ``prompt_strict`` / ``prompt_loose``: fraction of prompts whose every
        instruction is followed; ``instruction_strict`` / ``instruction_loose``: fraction of all instructions
        followed; ``per_type``: {instruction id: {count, strict, loose}}, sorted by id.
    """
    checks = [c for prompt in per_prompt for c in prompt]
    n_prompts, n_instr = len(per_prompt), len(checks)

    def frac(values: list[bool], n: int) -> float:
        return sum(values) / n if n else 0.0

    per_type: dict[str, dict[str, Any]] = {}
    for iid in sorted({c.id for c in checks}):
        of_type = [c for c in checks if c.id == iid]
        per_type[iid] = {"count": len(of_type), "strict": frac([c.strict for c in of_type], len(of_type)),
                         "loose": frac([c.loose for c in of_type], len(of_type))}
    return {
        "prompts": n_prompts,
        "instructions": n_instr,
        "prompt_strict": frac([bool(p) and all(c.strict for c in p) for p in per_prompt], n_prompts),
        "prompt_loose": frac([bool(p) and all(c.loose for c in p) for p in per_prompt], n_prompts),
        "instruction_strict": frac([c.strict for c in checks], n_instr),
        "instruction_loose": frac([c.loose for c in checks], n_instr),
        "per_type": per_type,
    }


def evaluate_answers(instructions: Mapping[str, Sequence[Instruction]], answers: Mapping[str, str]) -> dict[str, Any]:
    """:func:`accuracy` of one model's answers ({prompt id: text}) on every prompt that has instructions.

    A prompt without an answer (generation skipped it) counts as answered with nothing, so every model is scored on
    the same prompts.
    """
    return accuracy([check_response(ins, answers.get(pid, "")) for pid, ins in instructions.items() if ins])
