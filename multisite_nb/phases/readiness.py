"""Is this campaign ready to run here? The preflight's online half, asked before anything is touched.

With the campaign's files already checked (:func:`~multisite_nb.domain.params.campaign_problems`),
this asks the systems the site manifest names, each question with its own named cause:

* Rucio reachable (one ``/ping`` with a timeout), the account authenticated, every site's RSE known;
* every site's Butler opens;
* the central repository holds what the campaign starts from: its input collections, its sky map
  and every sky unit of the campaign in it, and the dataset types the pipeline needs placed.

Each finding is a :class:`~multisite_nb.domain.errors.Problem` naming the file and key an operator
would change (``sites.RAL.rse`` of the manifest, ``collections.inputs.0`` of the campaign).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from lsst.daf.butler import Butler, MissingCollectionError, MissingDatasetTypeError

from multisite_nb.adapters.butler.queries import chunked
from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.rucio.config import RucioClientConfig
from multisite_nb.adapters.rucio.probe import authenticated_account, known_rses, ping
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ButlerError, ConfigError, NotReadyError, Problem, RucioError
from multisite_nb.domain.wiring import campaign_wiring

__all__ = ["check_ready", "readiness_problems", "sky_unit_problems"]

#: Sky units named one by one at most (the rest are counted): a million-row message helps nobody.
_SHOWN = 20


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _rucio(campaign: Campaign) -> list[Problem]:
    manifest, access = campaign.manifest_path, campaign.manifest.rucio
    try:
        cfg = RucioClientConfig.locate(access.config, access.account)
    except ConfigError as exc:
        return [Problem(manifest, _short(exc), key="rucio.config", fix="give the Rucio client config of this site")]
    try:
        ping(cfg)
    except RucioError as exc:
        fix = f"start it (multisite-nb world up) or correct rucio_host in {cfg.path}"
        return [Problem(manifest, _short(exc), key="rucio.config", fix=fix)]
    try:
        authenticated_account(cfg)
    except RucioError as exc:
        return [Problem(manifest, _short(exc), key="rucio.account", fix=f"check the credentials in {cfg.path}")]
    wanted = {campaign.site(s).rse: s for s in campaign.all_sites}
    try:
        known = known_rses(cfg, wanted)
    except Exception as exc:  # rucio-clients' own kinds
        return [Problem(manifest, f"Rucio at {cfg.host} cannot list its RSEs: {_short(exc)}", key="rucio.config")]
    return [
        Problem(
            manifest,
            f"RSE is not known to Rucio at {cfg.host}",
            key=f"sites.{site}.rse",
            value=rse,
            fix="correct the name, or have the RSE added to Rucio",
        )
        for rse, site in wanted.items()
        if rse not in known
    ]


def sky_unit_problems(campaign: Campaign, butler: Butler) -> list[Problem]:
    """The campaign's sky map and every sky unit in it, checked against the central registry.

    Data IDs, not records (a sky map has ~2 million patches, each record a region to decode), and
    patches only of the tracts the units name patches of, their ids bound in chunks.
    """
    skymap = campaign.config.skymap
    if not butler.query_dimension_records("skymap", where=f"skymap = '{skymap}'", limit=None, explain=False):
        return [Problem(campaign.path, "not in the central repository", key="skymap", value=skymap, fix="register it")]
    tracts = {int(d["tract"]) for d in butler.query_data_ids(["tract"], skymap=skymap, limit=None, explain=False)}
    asked = sorted({u.tract for s in campaign.remote_sites for u in campaign.sky_units(s) if u.patch is not None})
    patches: set[tuple[int, int]] = set()
    for part in chunked(t for t in asked if t in tracts):
        for d in butler.query_data_ids(
            ["patch"], where="tract IN (asked)", bind={"asked": part}, skymap=skymap, limit=None, explain=False
        ):
            patches.add((int(d["tract"]), int(d["patch"])))

    def missing() -> Iterator[Problem]:
        for site in campaign.remote_sites:
            for i, u in enumerate(campaign.sky_units(site)):
                if u.tract not in tracts or (u.patch is not None and (u.tract, u.patch) not in patches):
                    yield Problem(
                        campaign.path,
                        f"not in sky map {skymap!r}",
                        key=f"sites.{site}.sky_units.{i}",
                        value=str(u),
                        fix=f"its tracts are {min(tracts, default=0)}..{max(tracts, default=0)}",
                    )

    found = list(islice(missing(), _SHOWN + 1))
    if len(found) > _SHOWN:
        rest = sum(1 for _ in missing()) - _SHOWN
        found[_SHOWN] = Problem(campaign.path, f"and {rest:,} more sky units not in sky map {skymap!r}", key="sites")
    return found


def _central(campaign: Campaign, butler: Butler) -> list[Problem]:
    problems = []
    for i, name in enumerate(campaign.config.collections.inputs):
        try:
            butler.collections.get_info(name)
        except MissingCollectionError:
            problems.append(
                Problem(
                    campaign.path,
                    "input collection is not in the central repository",
                    key=f"collections.inputs.{i}",
                    value=name,
                )
            )
    for name in campaign_wiring(campaign).placed:
        try:
            butler.get_dataset_type(name)
        except MissingDatasetTypeError:
            problems.append(
                Problem(
                    campaign.path,
                    f"the pipeline needs {name!r} placed at the sites; the central repository has no such dataset type",
                    key="pipeline",
                )
            )
    return problems + sky_unit_problems(campaign, butler)


def _butlers(campaign: Campaign) -> list[Problem]:
    problems = []
    for site in campaign.all_sites:
        try:
            with open_site_butler(campaign, site) as butler:
                if site == campaign.central:
                    problems += _central(campaign, butler)
        except ButlerError as exc:
            problems.append(
                Problem(
                    campaign.manifest_path,
                    _short(exc),
                    key=f"sites.{site}.butler",
                    fix="start the world (multisite-nb world up) or correct the repository",
                )
            )
        except Exception as exc:  # a registry that opens but cannot answer: that site's finding, not a crash
            why = f"the Butler repository {campaign.butler_repo(site)} cannot be queried: {type(exc).__name__}: {exc}"
            problems.append(Problem(campaign.manifest_path, _short(Exception(why)), key=f"sites.{site}.butler"))
    return problems


def readiness_problems(campaign: Campaign) -> list[Problem]:
    """Every reason the campaign cannot run on the systems its manifest names (empty: ready)."""
    return _rucio(campaign) + _butlers(campaign)


def check_ready(campaign: Campaign) -> None:
    """Refuse a campaign its systems cannot serve, before anything is touched.

    Raises
    ------
    NotReadyError
        Listing every problem, each naming the file and key.
    """
    problems = readiness_problems(campaign)
    if problems:
        raise NotReadyError(problems)
