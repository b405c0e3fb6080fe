"""The one preflight: is this campaign ready to run here? Asked before a run folder is made.

Offline, the campaign file, its site manifest and its pipeline (:func:`~multisite_nb.domain.params.campaign_problems`);
online, the systems the manifest names (:func:`~multisite_nb.phases.readiness.readiness_problems`).
``multisite-nb check`` prints what this finds; ``run`` and ``campaign`` ask the same two questions
(the campaign loaded through the offline half, then :func:`~multisite_nb.phases.readiness.check_ready`
in :func:`~multisite_nb.run.launch.launch`) and refuse before a run folder exists.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import Problem
from multisite_nb.domain.params import campaign_problems
from multisite_nb.phases.readiness import readiness_problems
from multisite_nb.run.context import campaign_env

__all__ = ["Preflight", "preflight"]


@dataclass
class Preflight:
    """What the preflight found: the campaign (None when its files are wrong), every problem, and timings."""

    campaign: Campaign | None
    offline: list[Problem] = field(default_factory=list)
    online: list[Problem] = field(default_factory=list)
    offline_s: float = 0.0
    online_s: float | None = None

    @property
    def problems(self) -> list[Problem]:
        return self.offline + self.online

    @property
    def ready(self) -> bool:
        return self.campaign is not None and not self.problems


def preflight(
    params: str | os.PathLike[str], world: str | os.PathLike[str] | None = None, *, online: bool = True
) -> Preflight:
    """Check a campaign, offline and (``online``) against its systems; touches nothing."""
    t0 = time.monotonic()
    campaign, problems = campaign_problems(params, env=campaign_env(world))
    found = Preflight(campaign, problems, offline_s=time.monotonic() - t0)
    if campaign is not None and online:
        t1 = time.monotonic()
        found.online = readiness_problems(campaign)
        found.online_s = time.monotonic() - t1
    return found
