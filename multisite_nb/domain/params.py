"""Reading parameter files: strict YAML, ``${VAR}`` expansion, and errors naming the file and the key.

A campaign file and its site manifest are validated together (:func:`load_campaign`) before
anything is touched; every error names the file and the key (or value) at fault. Reading a
campaign changes nothing in the process (no environment variable is set): what a run needs from
its world reaches the loader as ``env``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from multisite_nb.domain.config import BPS_MODE, EXECUTOR_ENTRY_POINTS, Campaign, CampaignConfig, SiteManifest
from multisite_nb.domain.errors import ConfigError, Problem
from multisite_nb.domain.wiring import pipeline_problems
from multisite_nb.domain.yamlfile import MAX_DEPTH, MAX_PARAMETER_BYTES, read_yaml

__all__ = [
    "campaign_problems",
    "manifest_problems",
    "MAX_DEPTH",
    "MAX_PARAMETER_BYTES",
    "executor_modes",
    "load_campaign",
    "load_manifest",
    "load_model",
    "parameter_path",
    "read_yaml",
    "repo_root",
    "validation_message",
    "validation_problems",
    "with_manifest",
]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def repo_root() -> Path:
    """The checkout this package lives in (parameters/, notebooks/ sit here)."""
    return Path(__file__).resolve().parents[2]


def _expand(value: Any, env: Mapping[str, str], path: Path, problems: list[Problem], where: str = "") -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree (unset ones: problems)."""
    if isinstance(value, dict):
        return {k: _expand(v, env, path, problems, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, path, problems, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(
                Problem(path, f"uses ${{{name}}}, which is not set", key=where, fix=f"set {name} or give a default")
            )
            return m.group(0)

        return _VAR.sub(sub, value)
    return value


_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it, or correct its spelling",
    "int_type": "write a whole number without quotes",
    "float_type": "write a number without quotes",
    "finite_number": "write a finite number",
    "string_type": "write a text",
    "bool_type": "write true or false",
    "list_type": "write a list",
    "dict_type": "write a mapping (key: value)",
}


def validation_problems(path: Path, exc: ValidationError) -> list[Problem]:
    """A pydantic error as :class:`Problem` records: one per thing wrong, each naming the file and the key."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        why = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(kind, err["msg"])
        why = why.removeprefix("Value error, ")
        value = err.get("input", Problem.UNSET)
        if kind in ("missing", "extra_forbidden") or isinstance(value, (dict, list)) or not loc:
            value = Problem.UNSET
        fix = _FIXES.get(kind, "")
        if isinstance(err.get("input"), bool) and kind in ("int_type", "float_type"):
            why, fix = "a YAML boolean is not a number", "write the number (yes/no/on/off/true/false are booleans)"
        problems.append(Problem(path, why, key=loc, value=value, fix=fix))
    return problems


def validation_message(path: Path, exc: ValidationError) -> str:
    """A pydantic error as one line per problem, each naming the file and the key."""
    return "\n".join(str(p) for p in validation_problems(path, exc))


def parameter_path(path: str | os.PathLike[str]) -> Path:
    """A parameter file's absolute path: relative paths from the current directory, else from the checkout."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (repo_root() / p).exists():
        p = repo_root() / p
    return p.resolve()


_READ = object()


def load_model[M: BaseModel](path: Path, model: type[M], data: Any = _READ) -> M:
    """Validate a parameter file (or its already expanded ``data``) as ``model``, naming file and key at fault."""
    problems: list[Problem] = []
    validated = _validated(path, model, read_yaml(path) if data is _READ else data, problems)
    if validated is None:
        raise ConfigError.of(problems)
    return validated


def executor_modes() -> set[str]:
    """What a manifest's ``workflow.mode`` may be: the executors' entry points, and ``bps``."""
    return {BPS_MODE} | {ep.name for ep in entry_points(group=EXECUTOR_ENTRY_POINTS)}


def _validated[M: BaseModel](path: Path, model: type[M], data: Any, problems: list[Problem]) -> M | None:
    if not isinstance(data, dict):
        problems.append(Problem(path, "expected a mapping (key: value) at the top level"))
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_problems(path, exc))
        return None


_UNREAD = object()


def _read(path: Path, problems: list[Problem]) -> Any:
    """The file's YAML, or ``_UNREAD`` (its problem added to ``problems``)."""
    try:
        return read_yaml(path)
    except ConfigError as exc:
        problems.extend(exc.problems or [Problem(path, str(exc).removeprefix(f"{path}: "))])
        return _UNREAD


def manifest_problems(
    path: Path, env: Mapping[str, str] | None = None, base: Path | None = None
) -> tuple[SiteManifest | None, list[Problem]]:
    """A site manifest checked: the manifest (local paths made absolute) if it is right, and every problem found."""
    path = Path(path).resolve()
    problems: list[Problem] = []
    data = _read(path, problems)
    if data is _UNREAD:
        return None, problems
    data = _expand(data, dict(os.environ if env is None else env), path, problems)
    manifest = _validated(path, SiteManifest, data, problems)
    if manifest is None:
        return None, problems
    modes = executor_modes()
    if manifest.workflow.mode not in modes:
        problems.append(
            Problem(
                path,
                "not a registered executor",
                key="workflow.mode",
                value=manifest.workflow.mode,
                fix=f"choose one of {', '.join(sorted(modes))}",
            )
        )
    bps = manifest.workflow.bps_site_config
    if bps and not (Path(bps) if Path(bps).is_absolute() else repo_root() / bps).is_file():
        problems.append(Problem(path, "no such file", key="workflow.bps_site_config", value=bps))
    return (None if problems else _anchored(manifest, base)), problems


def load_manifest(path: Path, env: Mapping[str, str] | None = None, base: Path | None = None) -> SiteManifest:
    """Load and validate a site manifest (``${VAR}`` expanded from ``env``).

    Raises
    ------
    ConfigError
        Listing every problem, each naming the file and the key.
    """
    manifest, problems = manifest_problems(path, env, base)
    if manifest is None:
        raise ConfigError.of(problems)
    return manifest


def _absolute(value: str | None, base: Path | None = None) -> str | None:
    """A local path made absolute against ``base`` (default: the current directory); URIs and None unchanged."""
    if value is None or "://" in value:
        return value
    return str(((base or Path.cwd()) / value).resolve())


def _anchored(manifest: SiteManifest, base: Path | None = None) -> SiteManifest:
    """The manifest with its local paths absolute, fixed when it is loaded.

    Relative paths (e.g. ``world/butler/RAL`` when ``$MSNB_WORLD`` is unset) mean ``base``: the
    directory the toolkit was started from (the CLI), or the checkout (the notebooks, wherever
    their kernel runs); and they must keep meaning it in the processes the toolkit starts
    elsewhere (``pipetask`` runs in its attempt folder). A bare name is a Butler repository
    alias (``DAF_BUTLER_REPOSITORY_INDEX``) and stays as it is.
    """
    sites = {
        name: spec.model_copy(
            update={
                "butler": spec.butler if "/" not in spec.butler else _absolute(spec.butler, base),
                "rse_root": _absolute(spec.rse_root, base),
            }
        )
        for name, spec in manifest.sites.items()
    }
    rucio = manifest.rucio.model_copy(update={"config": _absolute(manifest.rucio.config, base)})
    return manifest.model_copy(
        update={"sites": sites, "rucio": rucio, "butler_db_auth": _absolute(manifest.butler_db_auth, base)}
    )


def campaign_problems(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    base: Path | None = None,
    pipeline: bool = True,
) -> tuple[Campaign | None, list[Problem]]:
    """Check a campaign file, its site manifest and (``pipeline``) its pipeline together, touching nothing.

    Returns the campaign (None when anything is wrong) and every problem found, not only the first.
    ``pipeline=False``: the pipeline's path only (what recovery commands need: unlock, cleanup, status).
    """
    p = parameter_path(path)
    problems: list[Problem] = []
    data = _read(p, problems)
    cfg = _validated(p, CampaignConfig, data, problems) if data is not _UNREAD else None
    manifest_file = data.get("manifest") if isinstance(data, dict) else None
    mpath = (p.parent / manifest_file).resolve() if isinstance(manifest_file, str) and manifest_file else None
    manifest = None
    if mpath is not None:
        manifest, found = manifest_problems(mpath, env, base)
        problems += found
    if mpath is None and not problems:
        problems.append(Problem(p, "names no site manifest", key="manifest", fix="give the manifest's path"))
    if cfg is None or manifest is None or mpath is None:
        return None, problems
    for site in [cfg.central, *cfg.sites]:
        if site not in manifest.sites:
            problems.append(
                Problem(
                    p,
                    f"site is not in the site manifest {mpath}",
                    key="central" if site == cfg.central else f"sites.{site}",
                    value=site,
                    fix=f"choose one of {', '.join(manifest.sites)}",
                )
            )
    pipe = (p.parent / cfg.pipeline).resolve()
    if pipeline:
        problems += pipeline_problems(p, pipe, cfg.stages)
    return (None if problems else Campaign(cfg, manifest, p, mpath)), problems


def load_campaign(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    base: Path | None = None,
    pipeline: bool = True,
) -> Campaign:
    """Load a campaign file and its site manifest; validate both together, and the pipeline against the stages.

    Parameters
    ----------
    path
        The campaign YAML. A relative path is looked up from the current directory, then
        from the checkout's root (so notebooks run from ``notebooks/`` find it too).
    env
        Variables for ``${VAR}`` in the manifest (default: the process environment).
    base
        What the manifest's relative paths are relative to (default: the current directory).
    pipeline
        Also load the pipeline and check the stage plan against it (False: a recovery command's
        lighter reading, which a broken pipeline file does not stop).

    Raises
    ------
    ConfigError
        Listing every problem (``.problems``), each naming the file and the key at fault.
    """
    campaign, problems = campaign_problems(path, env, base=base, pipeline=pipeline)
    if campaign is None:
        raise ConfigError.of(problems)
    return campaign


def with_manifest(campaign: Campaign, path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Campaign:
    """The same campaign deployed elsewhere: another site manifest (e.g. the real facilities)."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = repo_root() / p
    manifest = load_manifest(p, env)
    for site in campaign.all_sites:
        if site not in manifest.sites:
            raise ConfigError(f"{p.resolve()}: key 'sites': site {site!r} of campaign {campaign.name} is missing")
    return Campaign(campaign.config, manifest, campaign.path, p.resolve())
