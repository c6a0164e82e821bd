"""Settings: every app setting the backend reads, validated in one place.

Each setting has a safe local default where one exists (Azurite, the local endpoint, the head-unit
simulator). A bad value raises `SettingsError` naming the setting, at start-up rather than at 3 a.m.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from shared.config.names import EVENTHUB_CONNECTION_SETTING
from shared.config.spark import SparkSettings, load_spark_settings
from shared.core.lifecycle import QuietHours
from shared.core.risk import ALERT_THRESHOLD

AZURITE_CONNECTION = "UseDevelopmentStorage=true"
# How the app authenticates to the scoring endpoint (Azure ML's auth_mode names, plus none for a local one).
SCORING_AUTH_MODES = ("key", "aad_token", "none")
# The backtest's least history (shared/models/backtest.py: evaluation 90 + horizon 30 + calibration span
# 56 + least training 60 + 1 days); settings must not import the model stack, so it is spelled out here.
MIN_RETRAIN_HISTORY_DAYS = 237
# How an alert reaches a head unit: the gateway's HTTPS webhook, or an IoT Hub cloud-to-device message.
HTTP_CHANNEL, IOTHUB_CHANNEL = "http", "iothub"
ALERT_CHANNELS = (HTTP_CHANNEL, IOTHUB_CHANNEL)
# A DNS host name, as IOTHUB_HOSTNAME must be (labels of letters, digits and inner hyphens).
_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")


class SettingsError(ValueError):
    """An app setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    """The app settings of docs/contracts.md ("Configuration"), typed.

    Storage connections (`AzureWebJobsStorage`, connection string or identity-based) are resolved by
    `shared.adapters.storage.app_storage_connection`, which knows the `__serviceUri` forms the host accepts.
    """

    eventhub_connection: str | None = None
    scoring_uri: str = "http://127.0.0.1:5001/score"
    scoring_key: str | None = None
    scoring_auth: str = "none"  # SCORING_AUTH: "key" (SCORING_KEY), "aad_token" (the app identity's token), "none"
    head_unit_gateway_url: str = "http://127.0.0.1:7072"
    head_unit_signing_key: str | None = None
    service_booking_url: str = "https://service.treyresearch.example/book"
    alert_probability_threshold: float = ALERT_THRESHOLD
    alert_cooldown_days: int = 7
    # ALERT_CHANNEL: the channel of a car whose car profile names none (shared/adapters/car_profiles.py).
    alert_channel: str = HTTP_CHANNEL
    # ALERT_EXPIRY_HOURS: how long an alert may wait for delivery before it is expired rather than delivered
    # late (the IoT Hub message's expiry time; the alert lifecycle's expiry).
    alert_expiry_hours: float = 24.0
    # IOTHUB_CONNECTION: the IoT Hub's service connection string (HostName=…;SharedAccessKeyName=…;
    # SharedAccessKey=…; a secret, never logged), for the iothub channel.
    iothub_connection: str | None = None
    # IOTHUB_HOSTNAME: the IoT Hub's host name (<hub>.azure-devices.net), reached with the app identity's
    # Entra ID tokens when IOTHUB_CONNECTION is not set (the identity needs "IoT Hub Data Contributor").
    iothub_hostname: str | None = None
    # After a booked service's appointment, how long its battery's alerts stay quiet (shared/core/feedback.py).
    feedback_booking_grace_days: int = 14
    # QUIET_HOURS: "HH:MM-HH:MM" in each car's local time, when non-critical alerts are held (empty: none).
    quiet_hours: str = ""
    # The oldest telemetry record accepted, in days before its event arrived (shared/core/events.py, "date window").
    telemetry_max_age_days: int = 1000
    retrain_schedule: str = "0 0 2 * * *"
    # nightly_retrain trains on the last RETRAIN_HISTORY_DAYS days of the archive and, past
    # RETRAIN_MAX_BATTERIES batteries, on a sample of them (shared/models/training_sample.py; README
    # "Retraining in bounded memory" says why these defaults).
    retrain_history_days: int = 486
    retrain_max_batteries: int = 1000
    batch_score_schedule: str = "0 0 3 * * *"
    compliance_schedule: str = "0 30 3 * * *"
    # The telemetry archive's compaction (shared/adapters/compaction.py), before the nightly jobs read it.
    compaction_schedule: str = "0 0 1 * * *"
    # The model monitor (shared/handlers/monitoring.py), after the batch score: matured accuracy, drift, and
    # the retrain trigger. A feature drifts at MONITOR_PSI_THRESHOLD (0.2: the usual "significant shift");
    # the champion degrades when its matured Brier or NRMSE is more than MONITOR_DEGRADATION_MARGIN
    # (relative) above its backtest's; after a triggered retrain no other for MONITOR_RETRAIN_COOLDOWN_DAYS
    # (40: the new model's scores need 30 days to mature, and a week of them to be judged, as a shadow too).
    monitor_schedule: str = "0 0 4 * * *"
    monitor_psi_threshold: float = 0.2
    monitor_degradation_margin: float = 0.25
    monitor_retrain_cooldown_days: int = 40
    # KEEP_SHADOW_CANDIDATE: a retrained model that lost the backtest is kept as the shadow, scored beside the
    # champion every night (never alerting) and promoted if it wins on matured outcomes.
    keep_shadow_candidate: bool = True
    # Skip (log and count) an unreadable or schema-mismatched archived file instead of failing the nightly job.
    archive_skip_unreadable: bool = False
    # Batteries prepared and scored at once by the nightly batch score: its memory is this × the model's window.
    batch_score_chunk_batteries: int = 5000
    # The component catalogue: "<container>/<blob>" in the app's storage, or a database (SQLAlchemy URL,
    # may hold a password: never logged) read with the query.
    component_catalog_blob: str = "components/catalog.csv"
    component_catalog_dsn: str | None = None
    component_catalog_query: str = "SELECT Component_ID, Car_ID, text FROM components"
    azureml_subscription_id: str | None = None
    azureml_resource_group: str | None = None
    azureml_workspace: str | None = None
    spark: SparkSettings | None = None  # SPARK_TARGET and its settings (shared/config/spark.py)

    @property
    def azureml_configured(self) -> bool:
        """True when all three workspace settings are present (retraining then runs in Azure ML)."""
        return all((self.azureml_subscription_id, self.azureml_resource_group, self.azureml_workspace))


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate settings from the environment (or the mapping given, for tests)."""
    env = os.environ if environ is None else environ
    defaults = Settings()

    def text(name: str, default: str | None) -> str | None:
        value = env.get(name, "").strip()
        return value or default

    threshold = _number(env, "ALERT_PROBABILITY_THRESHOLD", defaults.alert_probability_threshold, float)
    if not 0.0 < threshold <= 1.0:
        raise SettingsError(f"ALERT_PROBABILITY_THRESHOLD must be in (0, 1], got {threshold!r}")
    cooldown = _number(env, "ALERT_COOLDOWN_DAYS", defaults.alert_cooldown_days, int)
    if cooldown < 0:
        raise SettingsError(f"ALERT_COOLDOWN_DAYS must be 0 or more, got {cooldown!r}")
    channel = text("ALERT_CHANNEL", defaults.alert_channel).lower()
    if channel not in ALERT_CHANNELS:
        raise SettingsError(f"ALERT_CHANNEL must be one of {', '.join(ALERT_CHANNELS)}, got {channel!r}")
    expiry = _number(env, "ALERT_EXPIRY_HOURS", defaults.alert_expiry_hours, float)
    if not 0 < expiry <= 48:  # IoT Hub keeps a cloud-to-device message 48 hours at most
        raise SettingsError(f"ALERT_EXPIRY_HOURS must be more than 0 and at most 48, got {expiry!r}")
    grace = _number(env, "FEEDBACK_BOOKING_GRACE_DAYS", defaults.feedback_booking_grace_days, int)
    if not 0 <= grace <= 365:
        raise SettingsError(f"FEEDBACK_BOOKING_GRACE_DAYS must be 0 to 365, got {grace!r}")
    quiet_hours = text("QUIET_HOURS", defaults.quiet_hours) or ""
    if quiet_hours:
        try:
            QuietHours.parse(quiet_hours)
        except ValueError as error:
            raise SettingsError(f"QUIET_HOURS {error}") from None
    max_age = _number(env, "TELEMETRY_MAX_AGE_DAYS", defaults.telemetry_max_age_days, int)
    if not 1 <= max_age <= 7320:  # 20 years: no battery in service is older (shared/core/telemetry.py PLAUSIBLE_RANGES)
        raise SettingsError(f"TELEMETRY_MAX_AGE_DAYS must be 1 to 7320 (20 years), got {max_age!r}")
    history_days = _number(env, "RETRAIN_HISTORY_DAYS", defaults.retrain_history_days, int)
    if history_days < MIN_RETRAIN_HISTORY_DAYS:
        raise SettingsError(f"RETRAIN_HISTORY_DAYS must be {MIN_RETRAIN_HISTORY_DAYS} or more (the backtest's "
                            f"least history), got {history_days!r}")  # fmt: skip
    max_batteries = _number(env, "RETRAIN_MAX_BATTERIES", defaults.retrain_max_batteries, int)
    if max_batteries < 1:
        raise SettingsError(f"RETRAIN_MAX_BATTERIES must be 1 or more, got {max_batteries!r}")
    chunk = _number(env, "BATCH_SCORE_CHUNK_BATTERIES", defaults.batch_score_chunk_batteries, int)
    if chunk < 1:
        raise SettingsError(f"BATCH_SCORE_CHUNK_BATTERIES must be 1 or more, got {chunk!r}")
    skip_unreadable = env.get("ARCHIVE_SKIP_UNREADABLE", "").strip().lower()
    if skip_unreadable not in ("", "true", "false"):
        raise SettingsError(f"ARCHIVE_SKIP_UNREADABLE must be true or false, got {skip_unreadable!r}")
    psi_threshold = _number(env, "MONITOR_PSI_THRESHOLD", defaults.monitor_psi_threshold, float)
    if not psi_threshold > 0:
        raise SettingsError(f"MONITOR_PSI_THRESHOLD must be more than 0, got {psi_threshold!r}")
    margin = _number(env, "MONITOR_DEGRADATION_MARGIN", defaults.monitor_degradation_margin, float)
    if not margin >= 0:
        raise SettingsError(f"MONITOR_DEGRADATION_MARGIN must be 0 or more, got {margin!r}")
    retrain_cooldown = _number(env, "MONITOR_RETRAIN_COOLDOWN_DAYS", defaults.monitor_retrain_cooldown_days, int)
    if retrain_cooldown < 0:
        raise SettingsError(f"MONITOR_RETRAIN_COOLDOWN_DAYS must be 0 or more, got {retrain_cooldown!r}")
    keep_shadow = env.get("KEEP_SHADOW_CANDIDATE", "").strip().lower()
    if keep_shadow not in ("", "true", "false"):
        raise SettingsError(f"KEEP_SHADOW_CANDIDATE must be true or false, got {keep_shadow!r}")
    for name in ("RETRAIN_SCHEDULE", "BATCH_SCORE_SCHEDULE", "COMPLIANCE_SCHEDULE", "COMPACTION_SCHEDULE",
                 "MONITOR_SCHEDULE"):  # fmt: skip
        value = env.get(name)
        if value and len(value.split()) != 6:
            raise SettingsError(f"{name} must be a six-field NCRONTAB expression, got {value!r}")
    catalog_blob = text("COMPONENT_CATALOG_BLOB", defaults.component_catalog_blob)
    container, _, blob = catalog_blob.partition("/")
    if len(container) < 3 or not blob:
        raise SettingsError(f"COMPONENT_CATALOG_BLOB must be <container>/<blob>, got {catalog_blob!r}")
    scoring_uri = text("SCORING_URI", defaults.scoring_uri)
    gateway = text("HEAD_UNIT_GATEWAY_URL", defaults.head_unit_gateway_url)
    booking = text("SERVICE_BOOKING_URL", defaults.service_booking_url)
    urls = {"SCORING_URI": scoring_uri, "HEAD_UNIT_GATEWAY_URL": gateway, "SERVICE_BOOKING_URL": booking}
    for name, url in urls.items():
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"{name} must be an http(s) URL, got {url!r}")
    scoring_key = text("SCORING_KEY", None)
    scoring_auth = text("SCORING_AUTH", "key" if scoring_key else "none")
    if scoring_auth not in SCORING_AUTH_MODES:
        raise SettingsError(f"SCORING_AUTH must be one of {', '.join(SCORING_AUTH_MODES)}, got {scoring_auth!r}")
    if (scoring_auth == "key") != bool(scoring_key):
        raise SettingsError(
            "SCORING_KEY is set only with SCORING_AUTH=key (and needed then): "
            f"SCORING_AUTH is {scoring_auth!r}, SCORING_KEY is {'set' if scoring_key else 'empty'}"
        )
    _check_key_is_not_sent_in_clear(scoring_uri, scoring_key, env)
    iothub_hostname = text("IOTHUB_HOSTNAME", None)
    if iothub_hostname is not None and not _HOSTNAME.fullmatch(iothub_hostname):
        # A connection string put here by mistake holds a key: it is named, not quoted.
        got = "a connection string" if ";" in iothub_hostname or "=" in iothub_hostname else repr(iothub_hostname)
        raise SettingsError(f"IOTHUB_HOSTNAME must be the IoT Hub's host name, e.g. <hub>.azure-devices.net "
                            f"(no scheme, path or port), got {got}")  # fmt: skip
    return Settings(
        eventhub_connection=text(EVENTHUB_CONNECTION_SETTING, None),
        scoring_uri=scoring_uri,
        scoring_key=scoring_key,
        scoring_auth=scoring_auth,
        head_unit_gateway_url=gateway.rstrip("/"),
        head_unit_signing_key=text("HEAD_UNIT_SIGNING_KEY", None),
        service_booking_url=booking,
        alert_probability_threshold=threshold,
        alert_cooldown_days=cooldown,
        alert_channel=channel,
        alert_expiry_hours=expiry,
        iothub_connection=text("IOTHUB_CONNECTION", None),
        iothub_hostname=iothub_hostname,
        feedback_booking_grace_days=grace,
        quiet_hours=quiet_hours,
        telemetry_max_age_days=max_age,
        retrain_schedule=text("RETRAIN_SCHEDULE", defaults.retrain_schedule),
        retrain_history_days=history_days,
        retrain_max_batteries=max_batteries,
        batch_score_schedule=text("BATCH_SCORE_SCHEDULE", defaults.batch_score_schedule),
        compliance_schedule=text("COMPLIANCE_SCHEDULE", defaults.compliance_schedule),
        compaction_schedule=text("COMPACTION_SCHEDULE", defaults.compaction_schedule),
        monitor_schedule=text("MONITOR_SCHEDULE", defaults.monitor_schedule),
        monitor_psi_threshold=psi_threshold,
        monitor_degradation_margin=margin,
        monitor_retrain_cooldown_days=retrain_cooldown,
        keep_shadow_candidate=keep_shadow != "false",
        archive_skip_unreadable=skip_unreadable == "true",
        batch_score_chunk_batteries=chunk,
        component_catalog_blob=catalog_blob,
        component_catalog_dsn=text("COMPONENT_CATALOG_DSN", None),
        component_catalog_query=text("COMPONENT_CATALOG_QUERY", defaults.component_catalog_query),
        azureml_subscription_id=text("AZUREML_SUBSCRIPTION_ID", None),
        azureml_resource_group=text("AZUREML_RESOURCE_GROUP", None),
        azureml_workspace=text("AZUREML_WORKSPACE", None),
        spark=load_spark_settings(env),
    )


def _check_key_is_not_sent_in_clear(scoring_uri: str, scoring_key: str | None, env: Mapping[str, str]) -> None:
    """SCORING_KEY travels in every request's Authorization header: over plain http only to this machine
    (a loopback host), or where SCORING_ALLOW_INSECURE_HTTP=true says the network is trusted."""
    allow = env.get("SCORING_ALLOW_INSECURE_HTTP", "").strip().lower()
    if allow not in ("", "true", "false"):
        raise SettingsError(f"SCORING_ALLOW_INSECURE_HTTP must be true or false, got {allow!r}")
    if not scoring_key or not scoring_uri.lower().startswith("http://") or allow == "true":
        return
    host = urllib.parse.urlsplit(scoring_uri).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SettingsError(f"SCORING_URI must be https:// when SCORING_KEY is set (the key would cross the network "
                            f"in clear), got {scoring_uri!r}; plain http is for a loopback host, or set "
                            "SCORING_ALLOW_INSECURE_HTTP=true")  # fmt: skip


def configuration_problems(settings: Settings) -> list[str]:
    """What a valid configuration still cannot do, one sentence per setting, naming it. The start-up check
    logs these and GET /api/health fails on them; the app runs, so nothing queued is lost meanwhile."""
    problems = []
    if not settings.head_unit_signing_key:
        problems.append("HEAD_UNIT_SIGNING_KEY is not set (or blank): alerts cannot be signed, so push_alert "
                        "keeps them queued until it is")  # fmt: skip
    if settings.alert_channel == IOTHUB_CHANNEL and not iothub_configured(settings):
        problems.append("ALERT_CHANNEL is iothub but neither IOTHUB_CONNECTION nor IOTHUB_HOSTNAME is set: alerts "
                        "for cars without a channel of their own cannot be sent, so push_alert retries "
                        "them")  # fmt: skip
    return problems


def iothub_configured(settings: Settings) -> bool:
    """Whether the app can reach an IoT Hub: by its connection string, or by host name with the app identity."""
    return bool(settings.iothub_connection or settings.iothub_hostname)


def _number(env: Mapping[str, str], name: str, default, kind):
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise SettingsError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}") from None
