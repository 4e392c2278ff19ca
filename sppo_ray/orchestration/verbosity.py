"""How much the engines and Ray Data print: quiet by default, everything with ``--verbose``.

A run's terminal should show the round blocks and the summary. By default vLLM logs warnings only (its INFO lines
are a few dozen per engine start and reload), Ray Data shows no progress bars (the run's own progress line does)
and does not print each execution plan. ``sppo-ray ... --verbose`` (or ``SPPO_RAY_VERBOSE=1``) brings all of it
back.
"""

from __future__ import annotations

import logging
import warnings

from sppo_ray.runtime import VERBOSE_ENV, verbose

__all__ = ["VERBOSE_ENV", "configure_driver_output", "verbose"]


def configure_driver_output() -> None:
    """Ray Data's progress bars and logs for this driver (call before the first dataset runs): off unless
    ``--verbose``; the run's own progress line shows each stage (orchestration/progress.py), and Ray Data's bars,
    redrawn beside it on a terminal, would garble it."""
    from ray.data import DataContext

    loud = verbose()
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = loud
    ctx.enable_operator_progress_bars = loud
    ctx.print_on_execution_start = loud
    data_log = logging.getLogger("ray.data")
    data_log.setLevel(logging.DEBUG if loud else logging.INFO)  # its session log file keeps what it has to say
    for handler in data_log.handlers:  # the terminal only its errors ("progress bars disabled", and the like)
        if "File" not in type(handler).__name__:  # not Ray Data's SessionFileHandler
            handler.setLevel(logging.INFO if loud else logging.ERROR)
    if not loud:  # its tuning hints ("the operator can launch at most 1 task") are for its own users
        warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.data")
