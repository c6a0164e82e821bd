"""Settings are validated in one place, with errors that name the setting."""

import pytest

from shared.config.settings import SettingsError, configuration_problems, load_settings


def test_local_defaults_point_at_local_services():
    settings = load_settings({})
    assert settings.scoring_uri.startswith("http://127.0.0.1:")
    assert settings.alert_probability_threshold == 0.8
    assert not settings.azureml_configured


def test_values_are_typed_and_trimmed():
    settings = load_settings({
        "ALERT_PROBABILITY_THRESHOLD": "0.65", "ALERT_COOLDOWN_DAYS": "3",
        "HEAD_UNIT_GATEWAY_URL": "https://gw.example/", "AZUREML_SUBSCRIPTION_ID": "s",
        "AZUREML_RESOURCE_GROUP": "rg", "AZUREML_WORKSPACE": "ws",
    })  # fmt: skip
    assert settings.alert_probability_threshold == 0.65
    assert settings.alert_cooldown_days == 3
    assert settings.head_unit_gateway_url == "https://gw.example"
    assert settings.azureml_configured


def test_the_archive_is_strict_and_scored_in_chunks_of_5000_unless_set():
    assert (load_settings({}).archive_skip_unreadable, load_settings({}).batch_score_chunk_batteries) == (False, 5000)
    chosen = load_settings({"ARCHIVE_SKIP_UNREADABLE": " TRUE ", "BATCH_SCORE_CHUNK_BATTERIES": "200"})
    assert (chosen.archive_skip_unreadable, chosen.batch_score_chunk_batteries) == (True, 200)


@pytest.mark.parametrize(
    "name, value",
    [
        ("ALERT_PROBABILITY_THRESHOLD", "high"),
        ("ALERT_PROBABILITY_THRESHOLD", "1.5"),
        ("ALERT_COOLDOWN_DAYS", "-1"),
        ("ALERT_COOLDOWN_DAYS", "2.5"),
        ("SCORING_URI", "127.0.0.1:5001/score"),
        ("RETRAIN_SCHEDULE", "0 2 * * *"),
        ("TELEMETRY_MAX_AGE_DAYS", "0"),
        ("TELEMETRY_MAX_AGE_DAYS", "7321"),
        ("TELEMETRY_MAX_AGE_DAYS", "a year"),
        ("COMPACTION_SCHEDULE", "0 1 * * *"),
        ("ARCHIVE_SKIP_UNREADABLE", "yes"),
        ("BATCH_SCORE_CHUNK_BATTERIES", "0"),
    ],
)
def test_bad_values_name_the_setting(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


def test_scoring_auth_follows_the_key_unless_set():
    assert load_settings({}).scoring_auth == "none"
    assert load_settings({"SCORING_KEY": "k"}).scoring_auth == "key"
    assert load_settings({"SCORING_AUTH": "aad_token"}).scoring_auth == "aad_token"


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"SCORING_AUTH": "aml_token"}, "SCORING_AUTH must be one of key, aad_token, none"),
        ({"SCORING_AUTH": "key"}, "SCORING_KEY is set only with SCORING_AUTH=key"),
        ({"SCORING_AUTH": "aad_token", "SCORING_KEY": "k"}, "SCORING_AUTH is 'aad_token', SCORING_KEY is set"),
    ],
)
def test_scoring_auth_and_key_must_agree(environ, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ)


def test_the_telemetry_date_window_reaches_back_1000_days_unless_set():
    from shared.core.events import DEFAULT_MAX_AGE_DAYS

    assert load_settings({}).telemetry_max_age_days == DEFAULT_MAX_AGE_DAYS == 1000
    assert load_settings({"TELEMETRY_MAX_AGE_DAYS": " 90 "}).telemetry_max_age_days == 90


@pytest.mark.parametrize("uri", ["http://scoring.example.com/score", "http://10.0.0.7:5001/score",
                                 "http://battery-cycles.westeurope.inference.ml.azure.com/score"])  # fmt: skip
def test_a_key_over_plain_http_to_another_host_is_refused_naming_the_setting(uri):
    with pytest.raises(SettingsError, match=r"SCORING_URI must be https:// when SCORING_KEY is set") as caught:
        load_settings({"SCORING_URI": uri, "SCORING_KEY": "s3cr3t"})
    assert "s3cr3t" not in str(caught.value)
    assert "SCORING_ALLOW_INSECURE_HTTP=true" in str(caught.value)


@pytest.mark.parametrize(
    "environ",
    [
        {"SCORING_URI": "https://scoring.example.com/score", "SCORING_KEY": "k"},
        {"SCORING_URI": "http://127.0.0.1:5001/score", "SCORING_KEY": "k"},
        {"SCORING_URI": "http://127.8.9.10:5001/score", "SCORING_KEY": "k"},
        {"SCORING_URI": "http://[::1]:5001/score", "SCORING_KEY": "k"},
        {"SCORING_URI": "http://localhost:5001/score", "SCORING_KEY": "k"},
        {"SCORING_URI": "http://scoring.example.com/score"},  # no key to leak
        {"SCORING_URI": "http://scoring.internal/score", "SCORING_KEY": "k", "SCORING_ALLOW_INSECURE_HTTP": "true"},
    ],
)
def test_plain_http_is_accepted_for_loopback_without_a_key_or_by_explicit_opt_in(environ):
    assert load_settings(environ).scoring_uri == environ["SCORING_URI"]


def test_the_opt_in_must_be_true_or_false():
    with pytest.raises(SettingsError, match="SCORING_ALLOW_INSECURE_HTTP must be true or false"):
        load_settings({"SCORING_ALLOW_INSECURE_HTTP": "yes please"})


def test_alert_channel_and_expiry_are_read_and_checked_naming_the_setting():
    environ = {"ALERT_CHANNEL": " IoTHub ", "ALERT_EXPIRY_HOURS": "6", "IOTHUB_CONNECTION": "HostName=h"}
    settings = load_settings(environ)
    read = (settings.alert_channel, settings.alert_expiry_hours, settings.iothub_connection)
    assert read == ("iothub", 6.0, "HostName=h")
    assert (load_settings({}).alert_channel, load_settings({}).alert_expiry_hours) == ("http", 24.0)
    bad = [({"ALERT_CHANNEL": "sms"}, "ALERT_CHANNEL"), ({"ALERT_EXPIRY_HOURS": "49"}, "ALERT_EXPIRY_HOURS"),
           ({"ALERT_EXPIRY_HOURS": "0"}, "ALERT_EXPIRY_HOURS")]  # fmt: skip
    for environ, named in bad:
        with pytest.raises(SettingsError, match=named):
            load_settings(environ)


def test_the_iothub_channel_without_a_connection_or_a_host_name_is_a_configuration_problem_naming_both():
    [problem] = [p for p in configuration_problems(load_settings({"ALERT_CHANNEL": "iothub"})) if "IOTHUB" in p]
    assert "neither IOTHUB_CONNECTION nor IOTHUB_HOSTNAME is set" in problem
    assert not any("IOTHUB" in p for p in configuration_problems(load_settings({"HEAD_UNIT_SIGNING_KEY": "k"})))
    for either in ({"IOTHUB_CONNECTION": "HostName=h"}, {"IOTHUB_HOSTNAME": "trey-hub.azure-devices.net"}):
        assert not any("IOTHUB" in p for p in configuration_problems(load_settings({"ALERT_CHANNEL": "iothub",
                                                                                   **either})))  # fmt: skip


def test_iothub_hostname_is_read_and_must_be_a_bare_host_name():
    assert load_settings({"IOTHUB_HOSTNAME": " trey-hub.azure-devices.net "}).iothub_hostname == (
        "trey-hub.azure-devices.net")  # fmt: skip
    assert load_settings({}).iothub_hostname is None
    for bad in ("https://trey-hub.azure-devices.net", "trey-hub.azure-devices.net/", "trey-hub.azure-devices.net:5671",
                "HostName=trey-hub.azure-devices.net;SharedAccessKey=x", "trey_hub"):  # fmt: skip
        with pytest.raises(SettingsError, match="IOTHUB_HOSTNAME must be the IoT Hub's host name") as raised:
            load_settings({"IOTHUB_HOSTNAME": bad})
        assert "SharedAccessKey" not in str(raised.value)
