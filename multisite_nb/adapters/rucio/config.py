"""A Rucio client from an explicit client config file: what it reads, and the client it makes.

The process environment and rucio-clients' cached global config are neither read for the
connection nor changed, so two campaigns (or two worlds) can be used from one process.
"""

from __future__ import annotations

import configparser
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from multisite_nb.domain.errors import ConfigError, RucioError

if TYPE_CHECKING:
    from rucio.client import Client

__all__ = ["RucioClientConfig", "make_client", "token_cache_dir"]


_QUIET = logging.getLogger("multisite_nb.adapters.rucio.ops.client")


_CRED_KEYS = {
    "userpass": ("username", "password"),
    "x509": ("client_cert", "client_key"),
    "x509_proxy": ("client_proxy",),
    "oidc": ("oidc_scope", "oidc_audience", "oidc_issuer", "oidc_refresh_lifetime"),
}


@dataclass(frozen=True)
class RucioClientConfig:
    """What a client needs, read from one client config file (credentials stay in memory)."""

    path: Path
    host: str
    auth_host: str
    auth_type: str
    account: str | None
    creds: Mapping[str, str] = field(repr=False, default_factory=dict)
    ca_cert: str | None = None
    vo: str | None = None
    token_file: str | None = None
    request_retries: int | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], account: str | None = None) -> RucioClientConfig:
        """Read ``[client]`` of a Rucio client config.

        Raises
        ------
        ConfigError
            Naming the file and the key that is missing or wrong.
        """
        p = Path(path).expanduser().resolve()
        parser = configparser.ConfigParser(interpolation=None)
        try:
            if not parser.read(p, encoding="utf-8"):
                raise ConfigError(f"{p}: no such Rucio client config")
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: not a readable Rucio client config: {exc}") from None
        if not parser.has_section("client"):
            raise ConfigError(f"{p}: key 'client': the [client] section is missing")
        sect = parser["client"]
        for key in ("rucio_host", "auth_host", "auth_type"):
            if not sect.get(key):
                raise ConfigError(f"{p}: key 'client.{key}' is missing")
        auth_type = sect["auth_type"]
        creds = {k: sect[k] for k in _CRED_KEYS.get(auth_type, ()) if sect.get(k)}
        retries = sect.get("request_retries")
        try:
            n_retries = int(retries) if retries else None
        except ValueError:
            raise ConfigError(f"{p}: key 'client.request_retries': not an integer (got {retries!r})") from None
        return cls(
            path=p,
            host=sect["rucio_host"],
            auth_host=sect["auth_host"],
            auth_type=auth_type,
            account=account or sect.get("account"),
            creds=creds,
            ca_cert=sect.get("ca_cert"),
            vo=sect.get("vo"),
            token_file=sect.get("auth_token_file_path"),
            request_retries=n_retries,
        )

    @classmethod
    def locate(cls, path: str | os.PathLike[str] | None, account: str | None = None) -> RucioClientConfig:
        """The given config, else where rucio-clients itself would look (``$RUCIO_CONFIG``, ...)."""
        if path:
            return cls.from_file(path, account)
        candidates = (
            [os.environ.get("RUCIO_CONFIG")]
            + [
                str(Path(os.environ[v]) / "etc" / "rucio.cfg")
                for v in ("RUCIO_HOME", "VIRTUAL_ENV", "CONDA_PREFIX")
                if v in os.environ
            ]
            + ["/opt/rucio/etc/rucio.cfg"]
        )
        for cand in candidates:
            if cand and Path(cand).is_file():
                return cls.from_file(cand, account)
        raise ConfigError("no Rucio client config: set 'rucio.config' in the site manifest (or $RUCIO_CONFIG)")


def token_cache_dir(vo: str | None) -> Path:
    """Where rucio-clients caches this user's auth tokens when the config names no token file."""
    import getpass
    import tempfile

    try:
        from rucio.common.utils import get_tmp_dir

        base = get_tmp_dir()
    except Exception:  # pragma: no cover - rucio-clients missing or changed
        base = tempfile.gettempdir()
    return Path(base) / (f".rucio_{getpass.getuser()}" + (f"@{vo}" if vo and vo != "def" else ""))


def make_client(cfg: RucioClientConfig, *, quiet: bool) -> Client:
    """A rucio-clients ``Client`` from ``cfg``, with its token file from ``cfg`` too."""
    from rucio.client import Client

    class _ConfiguredClient(Client):
        def _get_auth_tokens(self) -> tuple[str | None, str, str, str]:
            if not cfg.token_file:
                return super()._get_auth_tokens()
            token_path = str(Path(cfg.token_file).parent)
            suffix = "for_default_account" if self.account is None else "for_account_" + self.account
            return cfg.token_file, f"{token_path}/{self.TOKEN_EXP_PREFIX}{suffix}", cfg.token_file, token_path

    client_log = logging.getLogger("baseclient")  # rucio-clients' module logger
    level = client_log.level
    if quiet:
        client_log.setLevel(logging.CRITICAL)
    try:
        where = {"rucio_host": cfg.host, "auth_host": cfg.auth_host, "ca_cert": cfg.ca_cert, "vo": cfg.vo}
        who = {"account": cfg.account, "auth_type": cfg.auth_type, "creds": dict(cfg.creds)}
        client = _ConfiguredClient(**where, **who, logger=_QUIET if quiet else logging.getLogger("baseclient"))
    except Exception as exc:
        raise RucioError(
            f"Rucio at {cfg.host} (config {cfg.path}) cannot be reached: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        client_log.setLevel(level)
    if cfg.request_retries is not None:
        client.request_retries = cfg.request_retries
    return client
