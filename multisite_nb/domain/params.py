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

import yaml
from pydantic import BaseModel, ValidationError

from multisite_nb.domain.config import BPS_MODE, EXECUTOR_ENTRY_POINTS, Campaign, CampaignConfig, SiteManifest
from multisite_nb.domain.errors import ConfigError

__all__ = [
    "executor_modes",
    "load_campaign",
    "load_manifest",
    "load_model",
    "parameter_path",
    "read_yaml",
    "repo_root",
    "validation_message",
    "with_manifest",
]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def repo_root() -> Path:
    """The checkout this package lives in (parameters/, notebooks/ sit here)."""
    return Path(__file__).resolve().parents[2]


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


def executor_modes() -> set[str]:
    """What a manifest's ``workflow.mode`` may be: the executors' entry points, and ``bps``."""
    return {BPS_MODE} | {ep.name for ep in entry_points(group=EXECUTOR_ENTRY_POINTS)}


def load_manifest(path: Path, env: Mapping[str, str] | None = None, base: Path | None = None) -> SiteManifest:
    """Load and validate a site manifest (``${VAR}`` expanded from ``env``)."""
    path = Path(path).resolve()
    data = _expand(read_yaml(path), dict(os.environ if env is None else env), path)
    manifest = load_model(path, SiteManifest, data)
    modes = executor_modes()
    if manifest.workflow.mode not in modes:
        raise ConfigError(
            f"{path}: key 'workflow.mode': {manifest.workflow.mode!r} is not a registered executor "
            f"(choices: {', '.join(sorted(modes))})"
        )
    bps = manifest.workflow.bps_site_config
    if bps and not (Path(bps) if Path(bps).is_absolute() else repo_root() / bps).is_file():
        raise ConfigError(f"{path}: key 'workflow.bps_site_config': no such file {bps}")
    return _anchored(manifest, base)


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


def load_campaign(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *, base: Path | None = None
) -> Campaign:
    """Load a campaign file and its site manifest; validate both together.

    Parameters
    ----------
    path
        The campaign YAML. A relative path is looked up from the current directory, then
        from the checkout's root (so notebooks run from ``notebooks/`` find it too).
    env
        Variables for ``${VAR}`` in the manifest (default: the process environment).
    base
        What the manifest's relative paths are relative to (default: the current directory).

    Raises
    ------
    ConfigError
        Naming the file and the key at fault.
    """
    p = parameter_path(path)
    cfg = load_model(p, CampaignConfig)

    mpath = (p.parent / cfg.manifest).resolve()
    manifest = load_manifest(mpath, env, base)
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
    return Campaign(cfg, manifest, p, mpath)


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
