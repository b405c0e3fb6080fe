"""Three small phases for the chain's tests, each one module-level phase and its notebook pair here.

``alpha`` saves a table and records how many rows it made; ``beta`` reads alpha's typed summary
and passes, fails its gate, raises or records nothing (``mode``); ``gamma`` needs beta. They show
what a new phase is: a :class:`~multisite_nb.phases.spec.Phase` with its own summary model, and a
notebook ``NN_<name>`` calling it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from multisite_nb.adapters.results import finish_phase, load_result, save_table
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import PhaseSummary
from multisite_nb.phases.spec import Phase, phase


class AlphaSummary(PhaseSummary):
    rows: int = 0
    factor: int = 0


class BetaSummary(PhaseSummary):
    rows: int = 0


def _alpha(campaign: Campaign | None, run_dir: str | Path, factor: int = 2) -> tuple[PhaseResult, pd.DataFrame]:
    started = utcnow()
    df = pd.DataFrame({"i": range(30), "value": [i * factor for i in range(30)]})
    table = save_table(run_dir, "alpha", "values", df)
    summary = AlphaSummary(rows=len(df), factor=factor)
    reason = f"30 values, factor {factor}"
    return finish_phase(run_dir, "alpha", True, reason, started, summary=summary, artifacts=[table]), df


def _beta(campaign: Campaign | None, run_dir: str | Path, mode: str = "pass") -> PhaseResult | None:
    started = utcnow()
    alpha = load_result(run_dir, "alpha")
    rows = alpha.summary.rows if alpha is not None and isinstance(alpha.summary, AlphaSummary) else 0
    if mode == "raise":
        raise RuntimeError(f"beta exploded on purpose after {rows} rows")
    if mode == "silent":
        return None
    ok = mode == "pass"
    reason = f"saw {rows} rows from alpha" if ok else f"beta gate failed on purpose ({rows} rows)"
    return finish_phase(run_dir, "beta", ok, reason, started, summary=BetaSummary(rows=rows))


def _gamma(campaign: Campaign | None, run_dir: str | Path) -> PhaseResult:
    return finish_phase(run_dir, "gamma", True, "gamma is trivially fine", utcnow())


ALPHA = phase("alpha", notebook="01_alpha", summary=AlphaSummary)(_alpha)
BETA = phase("beta", notebook="02_beta", summary=BetaSummary, follows=("alpha",))(_beta)
GAMMA = phase("gamma", notebook="03_gamma", needs=("beta",))(_gamma)
PHASES: tuple[Phase, ...] = (ALPHA, BETA, GAMMA)
