"""Every name the toolkit makes up, in one place: collections, Rucio datasets, run-folder paths.

Collections, for a campaign's output prefix ``P``, site ``S`` and step ``T``:

* ``P/S/T/gNNNN`` — the RUN collection one group of step ``T`` writes (deterministic, no
  timestamp: a retry of the group extends it), with ``P/S/T/gNNNN/chain``, the output chain the
  workflow system keeps for it;
* ``P/S/T`` — the step's CHAINED collection: the RUNs of its groups that succeeded, in order;
* ``P/S`` — the site's CHAINED output collection, each step's collection prepended, so it
  searches the site's newest outputs first, then its inputs;
* ``P/reference`` and ``P/reference/T`` — QA's single-site reference at the central site.

Datasets keep their RUN names when they move between sites, so what the central site holds
says where it was made (``P/S/...`` is site ``S``'s work).

Rucio datasets (in the campaign's scope): ``<campaign>.<label>.<site>`` for a shipment (label
``placement``, ``gather_<stage>``, ``redistribute_<stage>``, ``final``) and
``<shipment>.dimensions`` for the dimension records that travel ahead of it. A flowing campaign
ships a site's placement as ``<placement>.common`` (what every group needs: calibrations,
reference shards) and ``<placement>.bNNNN`` (the raws of a batch of the first step's groups).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multisite_nb.domain.config import Campaign

__all__ = [
    "REFERENCE",
    "artifacts_dir",
    "dashboard_dir",
    "safe_name",
    "samples_dir",
    "table_path",
    "lock_collection",
    "logs_dir",
    "made_at",
    "owner_collection",
    "placement_dataset",
    "placement_batch",
    "placement_site",
    "plan_path",
    "records_dataset",
    "group_chain",
    "group_name",
    "group_plan_file",
    "group_run",
    "reference_chain",
    "reference_logs_dir",
    "reference_run",
    "shard_dataset",
    "shipment_dataset",
    "site_chain",
    "step_run_collection",
]

#: The site name under the output prefix used by QA's single-site reference.
REFERENCE = "reference"


# -- collections -----------------------------------------------------------------------------


def site_chain(campaign: Campaign, site: str) -> str:
    """``P/S``: the CHAINED output collection of a site."""
    return f"{campaign.output_prefix}/{site}"


def step_run_collection(campaign: Campaign, site: str, step: str) -> str:
    """``P/S/T``: step ``T``'s collection at site ``S`` (CHAINED: its succeeded groups' RUNs)."""
    return f"{site_chain(campaign, site)}/{step}"


def group_name(index: int) -> str:
    """``gNNNN``: the name of a step's group ``index`` (1-based) at a site."""
    return f"g{index:04d}"


def group_run(campaign: Campaign, site: str, step: str, group: str) -> str:
    """``P/S/T/gNNNN``: the RUN collection one group of step ``T`` writes at site ``S``.

    When the group succeeds it is chained into ``P/S/T``, which is then the step's CHAINED
    collection (its succeeded groups, in group order), itself in the site's chain ``P/S``.
    """
    return f"{step_run_collection(campaign, site, step)}/{group}"


def group_chain(campaign: Campaign, site: str, step: str, group: str) -> str:
    """``P/S/T/gNNNN/chain``: the CHAINED output collection the workflow system keeps for one group.

    ``pipetask -o`` and BPS's ``output`` need one: it holds the group's RUN and its inputs as they
    were when the group started. Nothing else reads it.
    """
    return f"{group_run(campaign, site, step, group)}/chain"


def reference_chain(campaign: Campaign) -> str:
    """``P/reference``: the chain of QA's single-site reference."""
    return f"{campaign.output_prefix}/{REFERENCE}"


def reference_run(campaign: Campaign, step: str) -> str:
    """``P/reference/T``: the reference's RUN collection of step ``T``."""
    return f"{reference_chain(campaign)}/{step}"


def lock_collection(campaign: Campaign) -> str:
    """``P/operator-lock``: the campaign's one-operator lock, in the central repository."""
    return f"{campaign.output_prefix}/operator-lock"


def owner_collection(campaign: Campaign) -> str:
    """``P/multisite_nb-owner``: the marker saying which campaign owns the collections under ``P``."""
    return f"{campaign.output_prefix}/multisite_nb-owner"


def made_at(campaign: Campaign, site: str, run: str) -> bool:
    """Whether a RUN collection holds work done at ``site`` (``P/S/...``), not inputs it received."""
    return run.startswith(site_chain(campaign, site) + "/")


# -- Rucio datasets --------------------------------------------------------------------------


def shipment_dataset(campaign: Campaign, label: str, site: str) -> str:
    """``<campaign>.<label>.<site>``: the Rucio dataset of one shipment."""
    return f"{campaign.name}.{label}.{site}"


def campaign_dataset(campaign: Campaign, name: str) -> bool:
    """Whether Rucio dataset ``name`` is one of the campaign's (scopes may be shared by campaigns)."""
    return name.startswith(f"{campaign.name}.")


def placement_dataset(campaign: Campaign, site: str) -> str:
    """The Rucio dataset that carries a site's placed inputs."""
    return shipment_dataset(campaign, "placement", site)


def placement_batch(campaign: Campaign, site: str, batch: int) -> str:
    """A flowing placement's shipment ``batch`` to ``site`` (0: what every group needs, ``.common``)."""
    base = placement_dataset(campaign, site)
    return f"{base}.common" if batch == 0 else f"{base}.b{batch:04d}"


def placement_site(campaign: Campaign, name: str) -> str | None:
    """The site a placement dataset (whole, one of its batches, or their records) goes to; None: not one."""
    for site in campaign.remote_sites:
        base = placement_dataset(campaign, site)
        if name == base or re.match(rf"^{re.escape(base)}\.(common|b\d{{4,}})(\.dimensions)?$", name):
            return site
        if name == records_dataset(base):
            return site
    return None


def shard_dataset(shipment: str, index: int) -> str:
    """The ``index``-th dataset of a shipment large enough to be a container of datasets."""
    return f"{shipment}.part{index:04d}"


def records_dataset(shipment: str) -> str:
    """The Rucio dataset of the dimension records that travel ahead of ``shipment``."""
    return f"{shipment}.dimensions"


# -- run folder ----------------------------------------------------------------------------


def artifacts_dir(run_dir: str | os.PathLike[str], label: str) -> Path:
    """``<run_dir>/artifacts/<label>``: where a phase's use (``submit_early``) keeps its tables and files."""
    return Path(run_dir) / "artifacts" / label


def table_path(run_dir: str | os.PathLike[str], label: str, name: str) -> Path:
    """The CSV a phase's use saved as table ``name`` (see ``adapters.results.save_table``)."""
    return artifacts_dir(run_dir, label) / (name if name.endswith(".csv") else f"{name}.csv")


def plan_path(run_dir: str | os.PathLike[str]) -> Path:
    """Where placement keeps its plan."""
    return artifacts_dir(run_dir, "placement") / "plan.json"


def logs_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where step attempts keep their logs, graphs and status (``<site>/<step>/attempt-NN``)."""
    return artifacts_dir(run_dir, "logs")


def dashboard_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where the dashboard keeps its snapshot page and its transfer history."""
    return artifacts_dir(run_dir, "dashboard")


def samples_dir(run_dir: str | os.PathLike[str], stage: str) -> Path:
    """Where the submit notebook writes the sample submit files of a stage."""
    return artifacts_dir(run_dir, "submit") / stage


def group_plan_file(log_dir: str | os.PathLike[str], site: str, step: str) -> Path:
    """``<log_dir>/<site>/<step>/groups.parquet``: a step's group plan at a site (one row per data ID)."""
    return Path(log_dir) / safe_name(site) / safe_name(step) / "groups.parquet"


def safe_name(name: str) -> str:
    """``name`` with anything but letters, digits and ``_.-`` replaced (for file and payload names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def reference_logs_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where QA's reference steps keep theirs."""
    return logs_dir(run_dir) / REFERENCE
