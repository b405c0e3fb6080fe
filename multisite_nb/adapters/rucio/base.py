"""The Rucio access every resource shares: one campaign scope, one client per thread.

Each thread gets its own client (``requests`` sessions are not shared across threads), so the
per-site threads of a phase can use one :class:`~multisite_nb.adapters.rucio.ops.RucioOps`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Self

from multisite_nb.adapters.rucio.config import RucioClientConfig, make_client
from multisite_nb.domain.config import Campaign

if TYPE_CHECKING:
    from rucio.client import Client

__all__ = ["RucioBase"]


class RucioBase:
    """Rucio access for one campaign scope.

    Parameters
    ----------
    config
        The client config (see :meth:`RucioClientConfig.locate`).
    scope
        The campaign's scope.
    quiet
        Silence the client's own error logging (a live dashboard reports an unreachable Rucio
        in its status instead of filling its page with retry messages).
    """

    def __init__(self, config: RucioClientConfig, scope: str, *, quiet: bool = False):
        self.config = config
        self.scope = scope
        self.quiet = quiet
        self._local = threading.local()
        self.account = self.client.account

    @classmethod
    def for_campaign(cls, campaign: Campaign, *, quiet: bool = False) -> Self:
        """The campaign's Rucio, from its site manifest's ``rucio.config`` and ``rucio.account``."""
        access = campaign.manifest.rucio
        return cls(RucioClientConfig.locate(access.config, access.account), campaign.scope, quiet=quiet)

    @property
    def client(self) -> Client:
        """This thread's client (made on first use in each thread)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = make_client(self.config, quiet=self.quiet)
        return client

    def _dids(self, names: Sequence[str]) -> list[dict[str, str]]:
        return [{"scope": self.scope, "name": n} for n in names]
