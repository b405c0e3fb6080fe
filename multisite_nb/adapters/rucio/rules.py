"""Rucio's replication rules: made once, kept alive, watched, retried, with Rucio's reason when STUCK."""

from __future__ import annotations

from functools import partial

from multisite_nb.adapters.rucio.calls import transient_retry
from multisite_nb.adapters.rucio.dids import Dids
from multisite_nb.domain.errors import RucioError
from multisite_nb.domain.records import RuleRecord, RuleState

__all__ = ["Rules"]


class Rules(Dids):
    """Replication rules of this account (none carries a lifetime: their replicas are ingested in place)."""

    def find_rule(self, dataset: str, rse: str) -> RuleRecord | None:
        """The rule of this account for ``dataset`` on exactly ``rse``, if any (none for an unknown dataset)."""
        from rucio.common.exception import DataIdentifierNotFound

        try:
            for rule in self.client.list_did_rules(self.scope, dataset):
                if rule["rse_expression"] == rse and rule["account"] == self.account:
                    return RuleRecord.from_rucio(rule)
        except DataIdentifierNotFound:
            pass
        return None

    def _kept(self, rule: RuleRecord, lifetime_s: int | None) -> str:
        """An existing rule's id, its deletion undone first when it is ending (Rucio deletes softly).

        Reusing a deleted rule as it is would let Rucio's cleaner take its replicas within the
        hour, under a Butler that was just told they are there.
        """
        from rucio.common.exception import AccessDenied

        if rule.ending() and lifetime_s is None:
            try:
                self.client.update_replication_rule(rule.id, {"lifetime": None})
            except AccessDenied as exc:
                raise RucioError(
                    f"rule {rule.id} for {rule.did} on {rule.rse_expression} was deleted (it expires at "
                    f"{rule.expires_at:%Y-%m-%d %H:%M} UTC) and account {self.account} may not keep it: "
                    "ask a Rucio admin to clear its lifetime, or rerun after Rucio's cleaner has removed it"
                ) from exc
        return rule.id

    def ensure_rule(
        self,
        dataset: str,
        rse: str,
        *,
        lifetime_s: int | None,
        activity: str,
        comment: str,
        asynchronous: bool | None = None,
    ) -> tuple[str, bool]:
        """A rule for ``dataset`` on ``rse``; created unless one exists. Returns (id, created).

        An existing rule that was deleted (or is past its lifetime) is kept alive again.
        ``asynchronous``: the rule's locks are made by Rucio's judge-injector after the request
        (default: for a container, whose locks no single request could make in time).
        """
        from rucio.common.exception import DuplicateRule

        existing = self.find_rule(dataset, rse)
        if existing:
            return self._kept(existing, lifetime_s), False
        try:
            if asynchronous is None:
                asynchronous = self.is_container(dataset)
            ids = transient_retry(
                partial(
                    self.client.add_replication_rule,
                    dids=self._dids([dataset]),
                    copies=1,
                    rse_expression=rse,
                    lifetime=lifetime_s,
                    activity=activity,
                    comment=comment,
                    grouping="DATASET",
                    asynchronous=asynchronous,
                )
            )
        except DuplicateRule:  # made meanwhile (another operator): it is the rule asked for
            existing = self.find_rule(dataset, rse)
            if existing is None:
                raise
            return self._kept(existing, lifetime_s), False
        return str(ids[0]), True

    def rule(self, rule_id: str) -> RuleRecord:
        """A rule's state now; a STUCK rule comes with Rucio's reason."""
        rec = RuleRecord.from_rucio(self.client.get_replication_rule(rule_id))
        if rec.state is RuleState.STUCK and not rec.error:
            rec = rec.model_copy(update={"error": self.stuck_reason(rule_id)})
        return rec

    def list_rules(self) -> list[RuleRecord]:
        """Every rule of the scope (one call)."""
        return [RuleRecord.from_rucio(r) for r in self.client.list_replication_rules(filters={"scope": self.scope})]

    def delete_rule(self, rule_id: str) -> None:
        """Delete a rule; its replicas are left to Rucio's reaper (``purge_replicas``)."""
        self.client.delete_replication_rule(rule_id, purge_replicas=True)

    def retry_rule(self, rule_id: str) -> None:
        """Retry a STUCK rule's stuck locks now (Rucio's ``boost_rule``)."""
        self.client.update_replication_rule(rule_id, {"boost_rule": True})

    def stuck_reason(self, rule_id: str) -> str:
        """Rucio's own account of why a rule is stuck (``examine_replication_rule``)."""
        try:
            exam = self.client.examine_replication_rule(rule_id)
        except Exception as exc:  # the reason is a report, never a new failure
            return f"(examine failed: {type(exc).__name__})"
        parts = []
        for t in exam.get("transfers", [])[:5]:
            last = t.get("last_error") or t.get("last_source") or ""
            parts.append(f"{t.get('name')}: {last}".strip())
        return "; ".join(parts) or str(exam.get("rule_error") or "stuck")
