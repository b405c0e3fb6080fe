"""The toolkit's one door to Rucio: a thin, typed adapter over ``rucio-clients``.

No other module outside this package imports ``rucio``. On top of the client it adds what every
phase needs: bulk calls chunked to sizes the server accepts (:mod:`.calls`), idempotent creation
(an existing DID, attachment or rule is not an error), rule state as a typed
:class:`~multisite_nb.domain.records.RuleRecord` with the reason Rucio gives for STUCK rules.
One module per resource, as rucio's own client is laid out: :mod:`.dids`, :mod:`.replicas`,
:mod:`.rules`; the client itself from an explicit config file (:mod:`.config`).
"""

from __future__ import annotations

from multisite_nb.adapters.rucio.calls import CHUNK, DID_LIMIT, FileDid, chunked
from multisite_nb.adapters.rucio.config import RucioClientConfig
from multisite_nb.adapters.rucio.replicas import Replicas
from multisite_nb.adapters.rucio.rules import Rules

__all__ = ["CHUNK", "DID_LIMIT", "FileDid", "RucioClientConfig", "RucioOps", "chunked"]


class RucioOps(Replicas, Rules):
    """Rucio access for one campaign scope: its DIDs, replicas and rules (see :class:`~.base.RucioBase`)."""
