"""Campaign and site parameters: typed models, YAML loading, clear errors.

A campaign file (``parameters/campaign_*.yaml``) says *what* to do: which sky units each
site processes, which pipeline, and which stages run at the sites or centrally.  A site
manifest (``parameters/sites/*.yaml``) says *where* things are: each site's Rucio RSE,
Butler repository and BPS compute site.  Only the manifest differs between the embedded
world and the real facilities.

Every error raised while loading names the file and the key (or value) at fault, and
nothing is touched before the whole campaign has validated.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

__all__ = [
    "CampaignConfig",
    "ConfigError",
    "Campaign",
    "QASettings",
    "SiteManifest",
    "SiteSpec",
    "SkyUnit",
    "Stage",
    "load_campaign",
    "read_yaml",
    "validation_message",
    "repo_root",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: A Butler collection name: path-like segments of plain characters (no quotes, no '..', not absolute).
_COLLECTION = r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$"  # each segment starts plainly
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def repo_root() -> Path:
    """The checkout this package lives in (parameters/, notebooks/ sit here)."""
    return Path(__file__).resolve().parent.parent


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SkyUnit(_Strict):
    """One unit of sky a site owns: a whole tract, or one patch of a tract."""

    tract: int = Field(ge=0)
    patch: int | None = Field(default=None, ge=0)

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
    max_files_per_dataset: int = Field(
        default=10_000,
        ge=1,
        description="a larger shipment becomes a container of datasets of at most this many files",
    )


class WorkflowSpec(_Strict):
    """How steps are executed: plain pipetask here, BPS (parsl or PanDA) for real runs."""

    mode: Literal["pipetask", "bps"] = "pipetask"
    bps_site_config: str | None = Field(
        default=None, description="BPS config included by each submit file (wms class, site settings)"
    )
    jobs: int = Field(default=1, ge=1, description="pipetask -j")
    sites_at_once: int | None = Field(
        default=None,
        ge=1,
        description="how many sites run their steps at the same time (default: all, as at the facilities)",
    )


class SiteManifest(_Strict):
    """The deployment: Rucio access, workflow system and every site's locations."""

    rucio: RucioAccess = RucioAccess()
    workflow: WorkflowSpec = WorkflowSpec()
    butler_db_auth: str | None = Field(
        default=None,
        description="daf_butler's credentials file for PostgreSQL registries (LSST_DB_AUTH), used when it "
        "exists; None: the user's own (~/.lsst/db-auth.yaml)",
    )
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
    share: float | None = Field(default=None, gt=0, le=1, description="planned share of the work")

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
        for i, item in enumerate(ranges):
            text = str(item).strip()
            first, _, last = text.partition("-")
            if not first.isdigit() or (last and not last.isdigit()):
                raise ValueError(f"tracts[{i}]: {item!r} is neither a tract id nor a range 'first-last'")
            lo, hi = int(first), int(last or first)
            if hi < lo:
                raise ValueError(f"tracts[{i}]: range {item!r} ends before it starts")
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
    rule_lifetime_days: float | None = Field(
        default=None, description="refused: replicas ingested in place must not expire under the Butler"
    )
    activity: str = "User Subscriptions"
    qa: QASettings = QASettings()

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

    def with_manifest(self, path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Campaign:
        """The same campaign deployed elsewhere: another site manifest (e.g. the real facilities)."""
        p = Path(path)
        if not p.is_absolute() and not p.exists():
            p = repo_root() / p
        manifest = load_manifest(p, env)
        for site in self.all_sites:
            if site not in manifest.sites:
                raise ConfigError(f"{p.resolve()}: key 'sites': site {site!r} of campaign {self.name} is missing")
        return Campaign(self.config, manifest, self.path, p.resolve())

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


# -- loading ------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what parameter files never need and hide mistakes by.

    A key given twice in one mapping (the second would silently win) and aliases (``*name``,
    the door to "billion laughs" documents) are errors naming the line.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"alias *{event.anchor} is not allowed in a parameter file", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"key {key!r} is given twice", key_node.start_mark
                )
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a parameter file (UTF-8 YAML, no duplicate keys, no aliases).

    Raises
    ------
    ConfigError
        Naming the file, and the line for a YAML problem.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: no such parameter file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _expand(value: Any, env: Mapping[str, str], path: Path, where: str = "") -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: _expand(v, env, path, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: key '{where}' uses ${{{name}}}, which is not set")

        return _VAR.sub(sub, value)
    return value


def validation_message(path: Path, exc: ValidationError) -> str:
    """A pydantic error as one line per problem, each naming the file and the key."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        if loc == "(top level)" and msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
            lines.append(f"{path}: {msg}")
            continue
        if (
            "input" in err
            and err["type"] not in ("missing", "extra_forbidden")
            and not isinstance(err["input"], (dict, list))
        ):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{path}: key '{loc}': {msg.removeprefix('Value error, ')}")
    return "\n".join(lines)


def parameter_path(path: str | os.PathLike[str]) -> Path:
    """A parameter file's absolute path: relative paths from the current directory, else from the checkout."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (repo_root() / p).exists():
        p = repo_root() / p
    return p.resolve()


_READ = object()


def load_model[M: BaseModel](path: Path, model: type[M], data: Any = _READ) -> M:
    """Validate a parameter file (or its already expanded ``data``) as ``model``, naming file and key at fault."""
    data = read_yaml(path) if data is _READ else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(path, exc)) from None


def load_manifest(path: Path, env: Mapping[str, str] | None = None) -> SiteManifest:
    """Load and validate a site manifest (``${VAR}`` expanded from ``env``)."""
    path = Path(path).resolve()
    data = _expand(read_yaml(path), dict(os.environ if env is None else env), path)
    manifest = load_model(path, SiteManifest, data)
    bps = manifest.workflow.bps_site_config
    if bps and not (Path(bps) if Path(bps).is_absolute() else repo_root() / bps).is_file():
        raise ConfigError(f"{path}: key 'workflow.bps_site_config': no such file {bps}")
    return _anchored(manifest)


def _absolute(value: str | None) -> str | None:
    """A local path made absolute against the current directory; URIs and None unchanged."""
    if value is None or "://" in value:
        return value
    return str(Path(value).resolve())


def _anchored(manifest: SiteManifest) -> SiteManifest:
    """The manifest with its local paths absolute, fixed when it is loaded.

    Relative paths (e.g. ``world/butler/RAL`` when ``$MSNB_WORLD`` is unset) mean the
    directory the toolkit was started from — the checkout for the CLI and the notebooks —
    and must keep meaning it in the processes the toolkit starts elsewhere (``pipetask``
    runs in its attempt folder). A bare name is a Butler repository alias
    (``DAF_BUTLER_REPOSITORY_INDEX``) and stays as it is.
    """
    sites = {
        name: spec.model_copy(
            update={
                "butler": spec.butler if "/" not in spec.butler else _absolute(spec.butler),
                "rse_root": _absolute(spec.rse_root),
            }
        )
        for name, spec in manifest.sites.items()
    }
    rucio = manifest.rucio.model_copy(update={"config": _absolute(manifest.rucio.config)})
    return manifest.model_copy(
        update={"sites": sites, "rucio": rucio, "butler_db_auth": _absolute(manifest.butler_db_auth)}
    )


def load_campaign(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Campaign:
    """Load a campaign file and its site manifest; validate both together.

    Parameters
    ----------
    path
        The campaign YAML. A relative path is looked up from the current directory, then
        from the checkout's root (so notebooks run from ``notebooks/`` find it too).
    env
        Variables for ``${VAR}`` in the manifest (default: the process environment).

    Raises
    ------
    ConfigError
        Naming the file and the key at fault.
    """
    p = parameter_path(path)
    cfg = load_model(p, CampaignConfig)

    mpath = (p.parent / cfg.manifest).resolve()
    manifest = load_manifest(mpath, env)
    for site in [cfg.central, *cfg.sites]:
        if site not in manifest.sites:
            key = "central" if site == cfg.central else f"sites.{site}"
            raise ConfigError(
                f"{p}: key '{key}': site {site!r} is not in the site manifest {mpath} "
                f"(known: {', '.join(manifest.sites)})"
            )
    pipe = (p.parent / cfg.pipeline).resolve()
    if not pipe.is_file():
        raise ConfigError(f"{p}: key 'pipeline': no such file {pipe}")
    pdata = read_yaml(pipe)
    if isinstance(pdata, dict) and not pdata.get("imports"):  # subsets of imported pipelines are not known here
        subsets = set(pdata.get("subsets") or {}) | {
            s.get("label") for s in pdata.get("steps") or [] if isinstance(s, dict)
        }
        for i, stage in enumerate(cfg.stages):
            for j, step in enumerate(stage.steps):
                if step not in subsets:
                    raise ConfigError(
                        f"{p}: key 'stages.{i}.steps.{j}': {step!r} is not a subset of {pipe.name} "
                        f"(it has: {', '.join(sorted(x for x in subsets if x))})"
                    )
    if manifest.butler_db_auth and Path(manifest.butler_db_auth).is_file():
        # daf_butler (here and in every step process started from here) reads registry passwords from it
        os.environ["LSST_DB_AUTH"] = manifest.butler_db_auth
    return Campaign(cfg, manifest, p, mpath)
