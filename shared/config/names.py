"""The names the app and its infrastructure share: queues, Blob containers, tables, the Event Hub, and the
settings that hold their connections. Each is defined here once; infra/main.bicep creates the same names
(tests/test_infra.py checks both ways), so renaming one here without the template fails a test.

Column names are not here: they are the domain's (shared.core.telemetry, shared.core.alerts), and the
pure core imports nothing but itself.
"""

from __future__ import annotations

# Queue Storage: alerts waiting for delivery to the head units, and where the host moves one it gave up on
# (after host.json's maxDequeueCount deliveries).
ALERT_QUEUE = "maintenance-alerts"
ALERT_POISON_QUEUE = f"{ALERT_QUEUE}-poison"

# Blob containers
TELEMETRY_CONTAINER = "telemetry"  # the archive: telemetry/<yyyy>/<mm>/<dd>/<batch>.csv
DEADLETTER_CONTAINER = "deadletter"  # bad events and given-up alerts, each with its reason
PARKED_CONTAINER = "parked"  # batches scored later, while the endpoint is down or refuses them
SCORES_CONTAINER = "scores"  # the nightly batch scores
MODELS_CONTAINER = "models"  # the battery model registry: versions and the champion pointer
COMPLIANCE_MODELS_CONTAINER = "compliance-models"  # published compliance classifiers and their champion
COMPLIANCE_RESULTS_CONTAINER = "compliance"  # the nightly compliance results
MONITORING_CONTAINER = "monitoring"  # matured accuracy, drift and retrain decisions (adapters/monitor_store.py)

# Table Storage
ALERTS_TABLE = "alerts"  # one row per alert: claim, delivery state, cooldown
BATTERY_STATE_TABLE = "batterystate"  # each battery's rolling window of recent daily records
CARS_TABLE = "cars"  # one profile row per car: language, delivery channel and time zone
OPEN_LABELS_TABLE = "alertlabels"  # the outcome labels not closed yet (shared/adapters/feedback_store.py)

# Event Hubs: the cars' telemetry
TELEMETRY_EVENT_HUB = "car-telemetry"

# App settings holding connections (a connection string, or the identity-based `<name>__...` forms)
STORAGE_CONNECTION_SETTING = "AzureWebJobsStorage"
EVENTHUB_CONNECTION_SETTING = "EventHubConnection"
