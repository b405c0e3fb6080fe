"""What a run works with: the campaign (its manifest read against the world it runs on), the run
folder, and the world's folder, passed down explicitly instead of through environment variables.

A site manifest may name paths in a world (``${MSNB_WORLD}/butler/RAL``): the world's folder reaches
the manifest's ``${VAR}`` expansion as an argument here, and the chain hands it to each phase
notebook as the ``world_dir`` parameter. Nothing sets a variable of the process environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from multisite_nb.domain.config import Campaign
from multisite_nb.domain.params import load_campaign

__all__ = ["WORLD_VARIABLE", "RunContext", "campaign_env", "load_for_world"]

#: The manifest variable naming the world's folder (``${MSNB_WORLD}``), also what a shell may set.
WORLD_VARIABLE = "MSNB_WORLD"


def campaign_env(world: str | os.PathLike[str] | None = None) -> Mapping[str, str]:
    """The variables a manifest's ``${VAR}`` expand from: the process environment, and the world's folder
    when one is given (it wins over a ``$MSNB_WORLD`` of the shell)."""
    env = dict(os.environ)
    if world:
        env[WORLD_VARIABLE] = str(Path(world).resolve())
    return env


def load_for_world(
    params: str | os.PathLike[str],
    world: str | os.PathLike[str] | None = None,
    *,
    base: Path | None = None,
    pipeline: bool = True,
) -> Campaign:
    """The campaign of ``params``, its manifest read against ``world`` (or the shell's ``$MSNB_WORLD``);
    ``base``: what the manifest's relative paths are relative to (default: the current directory);
    ``pipeline=False``: without loading the pipeline (recovery commands)."""
    return load_campaign(params, env=campaign_env(world), base=base, pipeline=pipeline)


@dataclass(frozen=True)
class RunContext:
    """A campaign, the run folder it works in, and the world it runs on (None: the facilities, or the
    shell's ``$MSNB_WORLD``)."""

    campaign: Campaign
    run_dir: Path
    world: Path | None = None

    @classmethod
    def open(
        cls,
        params: str | os.PathLike[str],
        run_dir: str | os.PathLike[str],
        world: str | os.PathLike[str] | None = None,
    ) -> RunContext:
        return cls(load_for_world(params, world), Path(run_dir).resolve(), Path(world).resolve() if world else None)

    def notebook_parameters(self) -> dict[str, str]:
        """What every phase notebook of this run is given (besides ``run_dir``, which the chain sets)."""
        return {"campaign_file": str(self.campaign.path), "world_dir": str(self.world or "")}
