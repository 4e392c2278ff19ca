"""Errors the CLI reports as one clear line instead of a stack trace."""

from __future__ import annotations

from sppo_ray.config import ConfigError
from sppo_ray.data.prompts import PromptLoadError
from sppo_ray.generation.vllm_compat import VLLMVersionError
from sppo_ray.models import ModelSourceError
from sppo_ray.planning import PlanError

__all__ = ["RunFailedError", "RunStateError", "UserError"]


class RunStateError(RuntimeError):
    """A run directory cannot be resumed as asked (changed config, missing files)."""


class RunFailedError(RuntimeError):
    """A run stopped on an error in a stage (a role's or the driver's): one line naming the stage, the error and
    where its traceback and the roles' output are. What the run had finished is kept (`sppo-ray resume`)."""


# Everything caused by what the user gave us; the CLI prints these without a traceback.
UserError = (ConfigError, PromptLoadError, ModelSourceError, RunStateError, VLLMVersionError, PlanError)
