"""Campaign and site parameters as typed models (:mod:`multisite_nb.domain.params` reads the files).

A campaign file (``parameters/campaign_*.yaml``) says *what* to do: which sky units each
site processes, which pipeline, and which stages run at the sites or centrally.  A site
manifest (``parameters/sites/*.yaml``) says *where* things are: each site's Rucio RSE,
Butler repository and BPS compute site.  Only the manifest differs between the embedded
world and the real facilities.

Every error raised while loading names the file and the key (or value) at fault, and
nothing is touched before the whole campaign has validated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from multisite_nb.domain.errors import ConfigError

__all__ = [
    "BPS_MODE",
    "INT64_MAX",
    "MAX_SKY_UNITS",
    "Id",
    "DEFAULT_GROUP_SIZE",
    "PositiveCount",
    "ProcessingSettings",
    "Real",
    "EXECUTOR_ENTRY_POINTS",
    "Campaign",
    "CampaignConfig",
    "Collections",
    "Notify",
    "QASettings",
    "RemoteSite",
    "RucioAccess",
    "SiteManifest",
    "SiteSpec",
    "SkyUnit",
    "Stage",
    "Supervision",
    "WorkflowSpec",
]

#: The entry-point group naming the executors a site manifest's ``workflow.mode`` may choose.
EXECUTOR_ENTRY_POINTS = "multisite_nb.executors"
#: The mode that picks the BPS plugin from the manifest's BPS site config.
BPS_MODE = "bps"

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

#: The largest integer a registry column holds (SQLite and PostgreSQL ``BIGINT``).
INT64_MAX = 2**63 - 1
#: Sky units a campaign may give (a data release is ~8,000 tracts, the whole footprint ~15,000):
#: counted before a range is expanded, so that a typo (``0-999999999999``) costs nothing.
MAX_SKY_UNITS = 100_000

#: A registry id (tract, patch, visit ...): a whole number, not a boolean or a text, within int64.
Id = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]
#: A count of one or more, likewise strict.
PositiveCount = Annotated[int, Field(strict=True, ge=1, le=INT64_MAX)]
#: A real number: finite, not a boolean or a text.
Real = Annotated[float, Field(strict=True, allow_inf_nan=False)]
#: A Butler collection name: path-like segments of plain characters (no quotes, no '..', not absolute).
_COLLECTION = r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$"  # each segment starts plainly


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SkyUnit(_Strict):
    """One unit of sky a site owns: a whole tract, or one patch of a tract."""

    tract: Id
    patch: Id | None = None

    @property
    def key(self) -> tuple[int, int | None]:
        return (self.tract, self.patch)

    def __str__(self) -> str:
        return f"tract {self.tract}" if self.patch is None else f"tract {self.tract} patch {self.patch}"

    def where(self, skymap: str) -> str:
        """A Butler query expression selecting this unit."""
        expr = f"skymap = '{skymap}' AND tract = {self.tract}"
        return expr if self.patch is None else f"{expr} AND patch = {self.patch}"


class SiteSpec(_Strict):
    """Where one site's things are (from the site manifest)."""

    rse: str = Field(pattern=_NAME, description="Rucio RSE holding the site's Butler datastore")
    butler: str = Field(description="Butler repository (path or URI) of the site")
    rse_root: str | None = Field(
        default=None, description="Root of the RSE as the site sees it (LFN = path relative to it)"
    )
    compute_site: str = Field(description="BPS computeSite (PanDA queue site), e.g. SLAC, CC-IN2P3")
    compute_cloud: str = Field(default="US")
    queue: str | None = Field(default=None, description="PanDA queue for ordinary jobs")
    merge_queue: str | None = Field(default=None, description="PanDA queue for merge/final jobs")


class RucioAccess(_Strict):
    """How the toolkit reaches Rucio: a client config file (credentials stay in it)."""

    config: str | None = Field(default=None, description="rucio client cfg; None = RUCIO_CONFIG / default")
    account: str | None = None
    max_files_per_dataset: PositiveCount = Field(
        default=10_000,
        description="a larger shipment becomes a container of datasets of at most this many files",
    )


class WorkflowSpec(_Strict):
    """How steps are executed: plain pipetask here, BPS (parsl or PanDA) for real runs."""

    mode: str = Field(
        default="pipetask",
        pattern=_NAME,
        description="a registered executor (entry points 'multisite_nb.executors'), or 'bps': the BPS plugin "
        "the site config names",
    )
    bps_site_config: str | None = Field(
        default=None, description="BPS config included by each submit file (wms class, site settings)"
    )
    jobs: PositiveCount = Field(default=1, description="pipetask -j")
    sites_at_once: PositiveCount | None = Field(
        default=None,
        description="how many sites run their steps at the same time (default: all, as at the facilities)",
    )
    groups_in_flight: PositiveCount = Field(
        default=4, description="how many groups of a step one site runs at the same time"
    )


class Notify(_Strict):
    """Where the alerts that need a person go (see :mod:`multisite_nb.adapters.notify`): exactly one way.

    ``command``: an argv list run with the alert's JSON on stdin; ``webhook``: an ``http(s)`` URL
    that takes an HTTP POST of JSON, Slack-style (``{"text": ..., "alert": {...}}``). A webhook's URL
    usually carries a secret token: give it as ``${VAR}`` (``webhook: ${MSNB_ALERT_WEBHOOK}``), never
    in the file; it is never written to the run folder, the logs or the alert records. A refused
    connection, a timeout or an HTTP 5xx is tried again ``retries`` times, ``backoff_s`` doubling.
    """

    command: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    webhook: SecretStr | None = Field(default=None, description="an http(s) URL; give it as ${VAR}")
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10.0
    retries: Annotated[int, Field(strict=True, ge=0, le=100)] = 3
    backoff_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 2.0

    @model_validator(mode="after")
    def _one_way(self) -> Notify:
        if (self.command is None) == (self.webhook is None):
            raise ValueError(
                "give exactly one of notify.command (a command, the alert's JSON on stdin) and notify.webhook "
                "(an http(s) URL, as ${VAR})"
            )
        url = self.webhook.get_secret_value() if self.webhook is not None else ""
        if self.webhook is not None and not re.match(r"(?i)^https?://[^/\s]+", url):
            raise ValueError("notify.webhook is not an http(s) URL (its value is not shown: it may hold a token)")
        return self


#: A capacity: a positive, finite real (an integer is read as one).
Capacity = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class LinkCapacity(_Strict):
    """What moving files over one source -> destination link costs."""

    mb_per_s: Capacity = Field(description="sustained bandwidth, MB (1e6 bytes) per second")
    per_file_s: Capacity = Field(description="seconds of overhead per file (catalogue, request, checks)")


class Capacities(_Strict):
    """What the forecast before a campaign works from (see :mod:`multisite_nb.domain.forecast`).

    ``links``: ``"SRC->DST"`` -> link capacity, for every pair that moves files; ``per_quantum_s``:
    step -> seconds one quantum takes (``default`` for steps not named); ``per_group_s``: a group's
    fixed cost (its graph, the workflow system's start); ``per_shipment_s``: a shipment's fixed cost
    (registration, rules, records, ingest). A run's measured figures can stand in for them.
    """

    links: dict[str, LinkCapacity] = Field(default_factory=dict)
    per_quantum_s: dict[str, Capacity] = Field(default_factory=dict)
    per_group_s: Capacity = 10.0
    per_shipment_s: Capacity = 5.0

    @field_validator("links")
    @classmethod
    def _pairs(cls, v: dict[str, LinkCapacity]) -> dict[str, LinkCapacity]:
        for pair in v:
            if not re.match(rf"{_NAME[:-1]}->{_NAME[1:]}", pair):
                raise ValueError(f"link {pair!r} is not 'SOURCE->DESTINATION' (two site names)")
        return v


class Supervision(_Strict):
    """How ``multisite-nb supervise`` keeps a campaign going (see :mod:`multisite_nb.run.supervise`).

    ``health`` and ``heal`` are the deployment's own commands (argv lists, ``${VAR}`` expanded):
    ``health`` exits non-zero when a service the campaign needs is down, ``heal`` brings it back
    (the embedded world: ``multisite-nb world check`` / ``world up``; a facility: its own, or none,
    when its services are kept by the facility).
    """

    health: list[str] | None = Field(default=None, description="exits non-zero when a service is down")
    heal: list[str] | None = Field(default=None, description="brings stopped services back (idempotent)")
    watch_s: Capacity = Field(default=30.0, description="how often services are checked while a chain runs")
    retries: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=6, description="transient failures of one kind in a row before a person is asked"
    )
    backoff_s: Capacity = Field(default=10.0, description="the first wait after a transient failure (doubles)")
    max_backoff_s: Capacity = Field(default=300.0, description="the longest wait between two attempts")
    site_down_alert_s: Capacity = Field(default=900.0, description="a site down this long is a person's matter")
    person_wait_s: Capacity = Field(default=600.0, description="how often a run waiting for a person is tried again")


class SiteManifest(_Strict):
    """The deployment: Rucio access, workflow system and every site's locations."""

    rucio: RucioAccess = RucioAccess()
    workflow: WorkflowSpec = WorkflowSpec()
    capacities: Capacities | None = Field(default=None, description="what the forecast works from")
    supervision: Supervision = Supervision()
    butler_db_auth: str | None = Field(
        default=None,
        description="daf_butler's credentials file for PostgreSQL registries (LSST_DB_AUTH), used when it "
        "exists; None: the user's own (~/.lsst/db-auth.yaml)",
    )
    notify: Notify | None = Field(default=None, description="where alerts that need a person go")
    sites: dict[str, SiteSpec]

    @field_validator("sites")
    @classmethod
    def _names(cls, v: dict[str, SiteSpec]) -> dict[str, SiteSpec]:
        for name in v:
            if not re.match(_NAME, name):
                raise ValueError(f"site name {name!r} is not a simple name")
        rses = [s.rse for s in v.values()]
        dup = sorted({r for r in rses if rses.count(r) > 1})
        if dup:
            raise ValueError(f"RSE {dup[0]!r} is given to more than one site")
        return v


class Stage(_Strict):
    """A group of pipeline steps that runs either at every remote site or at the central site."""

    name: str = Field(pattern=_NAME)
    steps: list[str] = Field(min_length=1, description="pipeline subset labels, run in this order")
    where: Literal["sites", "central"]


class RemoteSite(_Strict):
    """A remote site's part of the sky: ``sky_units``, and/or whole tracts given as ranges.

    ``tracts: ["0-999", 1200]`` is short for a whole-tract sky unit per tract (a data release
    gives a site thousands of them); both keys may be used together.
    """

    sky_units: list[SkyUnit] = Field(min_length=1)
    share: Real | None = Field(default=None, gt=0, le=1, description="planned share of the work")

    @model_validator(mode="before")
    @classmethod
    def _tract_ranges(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "tracts" not in data:
            return data
        data = dict(data)
        ranges = data.pop("tracts")
        if not isinstance(ranges, list):
            raise ValueError("tracts: expected a list of tract ids and 'first-last' ranges")
        units = list(data.get("sky_units") or [])
        bounds = []
        for i, item in enumerate(ranges):
            text = str(item).strip() if isinstance(item, (int, str)) and not isinstance(item, bool) else ""
            first, _, last = text.partition("-")
            if not first.isdigit() or (last and not last.isdigit()):
                raise ValueError(f"tracts[{i}]: {item!r} is neither a tract id nor a range 'first-last'")
            lo, hi = int(first), int(last or first)
            if hi < lo:
                raise ValueError(f"tracts[{i}]: range {item!r} ends before it starts")
            if hi > INT64_MAX:
                raise ValueError(f"tracts[{i}]: {item!r} is past the largest id a registry holds ({INT64_MAX})")
            bounds.append((lo, hi))
        count = len(units) + sum(hi - lo + 1 for lo, hi in bounds)  # counted before anything is expanded
        if count > MAX_SKY_UNITS:
            raise ValueError(
                f"tracts: {count:,} sky units, more than a campaign holds ({MAX_SKY_UNITS:,}; a data release has "
                "~8,000 tracts): check the ranges"
            )
        for lo, hi in bounds:
            units += [{"tract": t} for t in range(lo, hi + 1)]
        data["sky_units"] = units
        return data


class Collections(_Strict):
    """Input collections in the central repo and the prefix of everything the campaign writes."""

    inputs: list[Annotated[str, Field(pattern=_COLLECTION)]] = Field(
        default_factory=lambda: ["HSC/defaults"], min_length=1
    )
    output_prefix: str | None = Field(default=None, pattern=_COLLECTION, description="default: the campaign name")


class QASettings(_Strict):
    """Which sky units QA's single-site reference covers (completeness is checked for all).

    ``sample_units_per_site``: how many of each site's units the reference covers, chosen
    deterministically with boundary units among them (``all``: every unit, a second data
    release at full size); ``sample``: units always covered, on top of that choice.
    """

    sample_units_per_site: int | Literal["all"] = Field(
        default=3, description="units per site the reference covers ('all': every unit)"
    )
    sample: list[SkyUnit] = Field(default_factory=list, description="units the reference always covers")

    @field_validator("sample_units_per_site", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            return v
        raise ValueError("expected a number of units per site (0 or more) or 'all'")

    @model_validator(mode="after")
    def _not_empty(self) -> QASettings:
        if self.sample_units_per_site == 0 and not self.sample:
            raise ValueError(
                "the reference would cover no sky unit: give sample_units_per_site >= 1 (or 'all') or sample units"
            )
        keys = [u.key for u in self.sample]
        dup = next((u for u in self.sample if keys.count(u.key) > 1), None)
        if dup is not None:
            raise ValueError(f"sample: {dup} is given twice")
        return self


#: Group sizes when the campaign gives none: per data-ID dimension, how many values one group holds
#: (a step is split along the first of these its step dimensions name; a global step is one group).
DEFAULT_GROUP_SIZE: dict[str, int] = {"tract": 10, "visit": 500, "exposure": 500}


class ProcessingSettings(_Strict):
    """How each site's steps are cut into groups, and how often a failed group is retried.

    ``group_size``: dimension -> values per group (merged over :data:`DEFAULT_GROUP_SIZE`; the
    campaign's own entries come first when a step names several); ``retries``: how many times a
    failed group is rerun (its failed quanta only) before it is held for an operator;
    ``groups_per_shipment``: in a flowing campaign, how many of the first step's groups have their
    raws moved as one shipment (each shipment verified on its own, then its groups released).
    """

    group_size: dict[str, PositiveCount] = Field(default_factory=dict)
    retries: Annotated[int, Field(strict=True, ge=0, le=100)] = 2
    groups_per_shipment: PositiveCount = 1

    @field_validator("group_size")
    @classmethod
    def _dimension_names(cls, v: dict[str, int]) -> dict[str, int]:
        from lsst.daf.butler import DimensionUniverse

        known = set(DimensionUniverse().getStaticDimensions().names)
        for name in v:
            if name not in known:
                raise ValueError(f"{name!r} is not a data dimension (e.g. exposure, visit, tract)")
        return v

    @property
    def sizes(self) -> dict[str, int]:
        """Every group size in force: the campaign's first, then the defaults it does not override."""
        return {**self.group_size, **{k: v for k, v in DEFAULT_GROUP_SIZE.items() if k not in self.group_size}}


class CampaignConfig(_Strict):
    """The campaign file as written (paths still relative to it)."""

    campaign: str = Field(pattern=_NAME)
    instrument: str = Field(pattern=_NAME)
    skymap: str = Field(pattern=_NAME)
    scope: str | None = Field(default=None, pattern=_NAME, description="Rucio scope; default: the campaign name")
    manifest: str = Field(description="site manifest file, relative to this file")
    central: str
    sites: dict[str, RemoteSite] = Field(min_length=1)
    pipeline: str = Field(description="pipeline YAML, relative to this file")
    stages: list[Stage] = Field(min_length=1)
    collections: Collections = Collections()
    rule_lifetime_days: Real | None = Field(
        default=None, description="refused: replicas ingested in place must not expire under the Butler"
    )
    activity: str = "User Subscriptions"
    qa: QASettings = QASettings()
    processing: ProcessingSettings = ProcessingSettings()

    @field_validator("rule_lifetime_days")
    @classmethod
    def _no_lifetime(cls, v: float | None) -> None:
        if v is not None:
            raise ValueError(
                "replication rules of this toolkit carry no lifetime: their replicas are ingested in place into "
                "the site Butlers, and an expired rule lets Rucio delete files a Butler still holds; remove the key "
                "(the campaign's data are removed on purpose by the cleanup phase)"
            )
        return None

    @model_validator(mode="after")
    def _check(self) -> CampaignConfig:
        total = sum(len(s.sky_units) for s in self.sites.values())
        if total > MAX_SKY_UNITS:
            raise ValueError(f"sites: {total:,} sky units in all, more than a campaign holds ({MAX_SKY_UNITS:,})")
        if self.central in self.sites:
            raise ValueError(f"sites.{self.central}: the central site is not also a remote site")
        seen: dict[tuple[int, int | None], str] = {}
        for site, spec in self.sites.items():
            for i, unit in enumerate(spec.sky_units):
                if unit.key in seen:
                    raise ValueError(f"sites.{site}.sky_units[{i}]: {unit} is already given to site {seen[unit.key]}")
                seen[unit.key] = site
        for site, spec in self.sites.items():  # after all sites: the order of the file does not matter
            for i, unit in enumerate(spec.sky_units):
                if unit.patch is not None and (unit.tract, None) in seen:
                    raise ValueError(
                        f"sites.{site}.sky_units[{i}]: {unit} lies in tract {unit.tract}, "
                        f"which is given whole to site {seen[(unit.tract, None)]}"
                    )
        for i, unit in enumerate(self.qa.sample):
            if unit.key not in seen and (unit.tract, None) not in seen:
                raise ValueError(f"qa.sample[{i}]: {unit} is not a sky unit of any site")
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stages: stage name {dup[0]!r} is used twice")
        steps = [st for s in self.stages for st in s.steps]
        dup = sorted({n for n in steps if steps.count(n) > 1})
        if dup:
            raise ValueError(f"stages: step {dup[0]!r} appears in more than one stage")
        shares = [s.share for s in self.sites.values() if s.share is not None]
        if shares and sum(shares) > 1.0 + 1e-9:
            raise ValueError(f"sites: the shares add up to {sum(shares):.2f}, more than 1")
        return self


class Campaign:
    """A validated campaign with its manifest loaded and its paths resolved.

    Parameters
    ----------
    config
        The campaign file's content.
    manifest
        The site manifest's content.
    path
        The campaign file.
    manifest_path
        The manifest file.
    """

    def __init__(self, config: CampaignConfig, manifest: SiteManifest, path: Path, manifest_path: Path):
        self.config = config
        self.manifest = manifest
        self.path = path
        self.manifest_path = manifest_path

    # -- convenient views -------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.campaign

    @property
    def central(self) -> str:
        return self.config.central

    @property
    def remote_sites(self) -> list[str]:
        return list(self.config.sites)

    @property
    def all_sites(self) -> list[str]:
        return [self.central, *self.remote_sites]

    @property
    def scope(self) -> str:
        return self.config.scope or self.config.campaign

    @property
    def output_prefix(self) -> str:
        return self.config.collections.output_prefix or self.config.campaign

    @property
    def pipeline_path(self) -> Path:
        return (self.path.parent / self.config.pipeline).resolve()

    def site(self, name: str) -> SiteSpec:
        """The manifest entry of a site."""
        return self.manifest.sites[name]

    def stage(self, name: str) -> Stage:
        """The stage plan's stage called ``name``."""
        for st in self.config.stages:
            if st.name == name:
                return st
        have = ", ".join(s.name for s in self.config.stages)
        raise ConfigError(f"{self.path}: no stage {name!r} in 'stages' (have: {have})")

    def sky_units(self, site: str) -> list[SkyUnit]:
        """The sky units a remote site owns (empty for the central site)."""
        spec = self.config.sites.get(site)
        return list(spec.sky_units) if spec else []

    def butler_repo(self, site: str) -> str:
        return self.site(site).butler

    @property
    def db_auth(self) -> str | None:
        """daf_butler's credentials file for the sites' PostgreSQL registries (the manifest's
        ``butler_db_auth``), when it exists; None: the user's own (``~/.lsst/db-auth.yaml``)."""
        path = self.manifest.butler_db_auth
        return path if path and Path(path).is_file() else None

    def summary(self) -> dict[str, Any]:
        """A JSON-able description for notebooks and run logs (no credentials in it)."""
        return {
            "campaign": self.name,
            "instrument": self.config.instrument,
            "skymap": self.config.skymap,
            "central": self.central,
            "sites": {s: [str(u) for u in self.sky_units(s)] for s in self.remote_sites},
            "pipeline": str(self.pipeline_path),
            "stages": [s.model_dump() for s in self.config.stages],
            "manifest": str(self.manifest_path),
        }
