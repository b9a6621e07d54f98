"""``HubDeps``: every service a route may use, built once and handed to each router.

Routers receive what they need explicitly from this bundle; nothing is looked up on the
app's state at request time (a service locator hides what a route depends on).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud_sync.access import Access
from cloud_sync.admission import BodyBudget
from cloud_sync.enroll import DeviceAuth
from cloud_sync.fleet_ca import FleetCA
from cloud_sync.groupcommit import GroupCommit
from cloud_sync.ingest import Ingestor
from cloud_sync.log import HubLog
from cloud_sync.metering import Metering, Webhooks
from cloud_sync.metrics import HubMetrics
from cloud_sync.policies import DevicePolicies
from cloud_sync.settings import HubSettings
from cloud_sync.storage import Store
from cloud_sync.storage.anomalies import AnomalyBook
from cloud_sync.storage.sourcegaps import SourceGapBook

__all__ = ["Clock", "HubDeps"]

Clock = Callable[[], int]  # nanoseconds since the Unix epoch


@dataclass(frozen=True, slots=True)
class HubDeps:
    """The hub's services over one store; ``owns_store``: the lifespan closes it."""

    settings: HubSettings
    store: Store
    log: HubLog
    fleet: FleetCA
    anomalies: AnomalyBook
    silences: SourceGapBook  # the source gaps (key 16) of accepted proofs
    ingestor: Ingestor
    writer: GroupCommit
    metrics: HubMetrics
    budget: BodyBudget  # request bodies held at once (cloud_sync/admission.py)
    device_auth: DeviceAuth
    access: Access
    policies: DevicePolicies
    metering: Metering
    webhooks: Webhooks
    now_ns: Clock
    owns_store: bool

    @classmethod
    def open(
        cls, settings: HubSettings, *, store: Store | None = None, clock: Clock | None = None
    ) -> HubDeps:
        """Every service of a hub over ``store`` (opened from ``settings.db_url`` when None).

        Starts no thread: the app's lifespan does (``start``), so building a hub is free of
        side effects beyond opening its files and database.
        """
        now_ns: Clock = clock or time.time_ns
        owns_store = store is None
        store = store or Store.open(settings.db_url)
        log = HubLog.open(store, settings.data_dir, settings.log_origin, settings.log_key_uri)
        anomalies = AnomalyBook(store.engine)
        silences = SourceGapBook(store.engine)
        ingestor = Ingestor(
            store,
            settings.limits,
            allow_software_keys=settings.allow_software_keys,
            log=log,
            indexes=(anomalies, silences),
        )
        ingestor.warm()  # the fleet's rows in one query, not one each first upload
        metrics = HubMetrics()
        budget = BodyBudget(settings.limits.max_held_body_bytes, on_refusal=metrics.shed.inc)
        metrics.watch(
            lambda: {
                "log_entries": float(log.size()),
                "body_bytes_held": float(budget.held),
                **_device_counts(store),
            }
        )
        return cls(
            settings=settings,
            store=store,
            log=log,
            fleet=FleetCA.load_or_create(
                settings.data_dir, settings.fleet_name, now=dt.datetime.now(dt.UTC)
            ),
            anomalies=anomalies,
            silences=silences,
            ingestor=ingestor,
            writer=GroupCommit(
                ingestor,
                on_commit=metrics.group_requests.observe,
                gather_s=settings.commit_gather_s,
            ),
            metrics=metrics,
            budget=budget,
            device_auth=DeviceAuth(store, now_ns),
            access=Access(store.engine, settings.admin_token, now_ns),
            policies=DevicePolicies(store.engine),
            metering=Metering(store.engine, log, now_ns),
            webhooks=Webhooks(store.engine, settings.webhook_url, settings.webhook_secret),
            now_ns=now_ns,
            owns_store=owns_store,
        )

    def start(self) -> None:
        """Background work of a running hub: resume webhook deliveries left pending."""
        self.webhooks.start()

    def stop(self) -> None:
        self.webhooks.stop()
        if self.owns_store:
            self.store.close()


def _device_counts(store: Store) -> dict[str, float]:
    devices = store.list_devices()
    return {
        "devices": float(len(devices)),
        "devices_revoked": float(sum(d.revoked for d in devices)),
    }
