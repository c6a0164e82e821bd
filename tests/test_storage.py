"""Storage clients and blob helpers: connection parsing offline, the connection-string path on Azurite."""

from __future__ import annotations

import uuid

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.identity import DefaultAzureCredential

from shared.adapters.storage import (
    POINT_READS_UP_TO,
    IdentityConnection,
    app_storage_connection,
    blob_service,
    download_bytes,
    download_file,
    download_json,
    ensure_container,
    list_blob_names,
    queue_service,
    read_rows,
    resolve_connection,
    table_service,
    upload_bytes,
    upload_creating_container,
    upload_file,
    upload_json,
)
from shared.config.settings import AZURITE_CONNECTION, SettingsError

SETTING = "AzureWebJobsStorage"


def unique(prefix: str) -> str:
    """A fresh container/queue/table name, so tests sharing the session's Azurite never collide."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


# --- resolving a connection setting (no network) ------------------------------------------------------


def test_a_connection_string_wins_over_identity_settings():
    env = {SETTING: "AccountName=a;AccountKey=b", f"{SETTING}__blobServiceUri": "https://a.blob.core.windows.net"}
    assert resolve_connection(SETTING, "blob", env) == "AccountName=a;AccountKey=b"


def test_service_specific_uris_give_identity_connections_per_service():
    env = {
        f"{SETTING}__blobServiceUri": "https://acct.blob.core.windows.net/",
        f"{SETTING}__queueServiceUri": "https://acct.queue.core.windows.net",
        f"{SETTING}__tableServiceUri": "https://acct.table.core.windows.net",
    }
    for service in ("blob", "queue", "table"):
        connection = resolve_connection(SETTING, service, env)
        assert isinstance(connection, IdentityConnection)
        assert connection.service == service
        assert connection.service_uri == f"https://acct.{service}.core.windows.net"
        assert isinstance(connection.credential, DefaultAzureCredential)
        assert connection.client_id is None


def test_service_uri_alias_serves_blob_and_queue_but_not_table():
    env = {"MyStorage__serviceUri": "https://acct.blob.core.windows.net"}
    assert resolve_connection("MyStorage", "blob", env).service_uri == "https://acct.blob.core.windows.net"
    with pytest.raises(SettingsError, match="MyStorage__tableServiceUri"):
        resolve_connection("MyStorage", "table", env)


def test_account_name_derives_public_cloud_endpoints():
    env = {f"{SETTING}__accountName": "fleetstore01", f"{SETTING}__clientId": "11111111-2222"}
    queue = resolve_connection(SETTING, "queue", env)
    assert queue.service_uri == "https://fleetstore01.queue.core.windows.net"
    assert queue.client_id == "11111111-2222"
    with pytest.raises(SettingsError, match="__accountName must be a storage account name"):
        resolve_connection(SETTING, "blob", {f"{SETTING}__accountName": "Not_An_Account"})


def test_missing_setting_is_named_in_the_error_and_blank_counts_as_missing():
    with pytest.raises(SettingsError) as error:
        resolve_connection(SETTING, "blob", {SETTING: "  "})
    message = str(error.value)
    assert message.startswith(f"{SETTING} is not set")
    assert f"{SETTING}__blobServiceUri" in message and f"{SETTING}__accountName" in message


def test_default_applies_only_when_nothing_is_set():
    assert resolve_connection(SETTING, "blob", {}, default=AZURITE_CONNECTION) == AZURITE_CONNECTION
    assert app_storage_connection("table", {}) == AZURITE_CONNECTION
    identity = app_storage_connection("blob", {f"{SETTING}__blobServiceUri": "https://a.blob.core.windows.net"})
    assert isinstance(identity, IdentityConnection)


def test_a_malformed_service_uri_is_named():
    with pytest.raises(SettingsError, match=f"{SETTING}__queueServiceUri must be an http"):
        resolve_connection(SETTING, "queue", {f"{SETTING}__queueServiceUri": "acct.queue.core.windows.net"})


def test_identity_connection_builds_clients_on_its_uri_and_only_for_its_service():
    connection = resolve_connection(SETTING, "blob", {f"{SETTING}__serviceUri": "https://acct.blob.core.windows.net"})
    client = blob_service(connection)
    assert client.url.startswith("https://acct.blob.core.windows.net")
    assert client.credential is connection.credential
    with pytest.raises(ValueError, match="a blob connection cannot build a queue client"):
        queue_service(connection)


@pytest.mark.parametrize("shorthand", ["UseDevelopmentStorage=true", "UseDevelopmentStorage=true;",
                                       "usedevelopmentstorage=True"])  # fmt: skip
def test_development_storage_shorthand_means_default_azurite_for_all_three_sdks(shorthand):
    clients = [blob_service(shorthand), queue_service(shorthand), table_service(shorthand)]
    for port, client in zip((10000, 10001, 10002), clients, strict=True):
        assert client.url.startswith(f"http://127.0.0.1:{port}/devstoreaccount1")
        assert client.account_name == "devstoreaccount1"


def test_an_empty_connection_string_is_a_settings_error():
    with pytest.raises(SettingsError, match="empty"):
        blob_service("")


# --- the connection-string path on a real Azurite -----------------------------------------------------


def test_a_write_creates_its_missing_container_and_then_just_writes(storage_connection):
    service = blob_service(storage_connection)
    name = unique("optimistic")
    upload_creating_container(service, name, "day/one.csv", b"first")  # the container did not exist
    upload_creating_container(service, name, "day/two.csv", b"second")
    container = service.get_container_client(name)
    assert download_bytes(container, "day/one.csv") == b"first"
    assert download_bytes(container, "day/two.csv") == b"second"
    service.delete_container(name)
    upload_creating_container(service, name, "day/three.csv", b"third")  # deleted meanwhile: made again
    assert download_bytes(service.get_container_client(name), "day/three.csv") == b"third"


def test_blob_helpers_round_trip_on_azurite(storage_connection, tmp_path):
    service = blob_service(storage_connection)
    name = unique("helpers")
    container = ensure_container(service, name)
    assert ensure_container(service, name).container_name == name  # a second call is harmless

    upload_bytes(container, "a/raw.bin", b"\x00\x01payload")
    upload_json(container, "a/doc.json", {"n": 1, "text": "é"})
    assert download_bytes(container, "a/raw.bin") == b"\x00\x01payload"
    assert download_json(container, "a/doc.json") == {"n": 1, "text": "é"}
    assert download_bytes(container, "a/missing.bin") is None
    assert download_json(container, "a/missing.json") is None
    with pytest.raises(ResourceExistsError):
        upload_bytes(container, "a/raw.bin", b"other", overwrite=False)
    assert download_bytes(container, "a/raw.bin") == b"\x00\x01payload"

    source = tmp_path / "model.txt"
    source.write_bytes(bytes(range(256)) * 1000)
    upload_file(container, "b/model.txt", source)
    download_file(container, "b/model.txt", tmp_path / "copy.txt")
    assert (tmp_path / "copy.txt").read_bytes() == source.read_bytes()

    assert list_blob_names(container) == ["a/doc.json", "a/raw.bin", "b/model.txt"]
    assert list_blob_names(container, "a/") == ["a/doc.json", "a/raw.bin"]


def test_missing_container_reads_as_empty(storage_connection):
    container = blob_service(storage_connection).get_container_client(unique("absent"))
    assert download_bytes(container, "x") is None
    assert list_blob_names(container) == []


def test_queue_and_table_clients_work_from_the_connection_string(storage_connection):
    queue = queue_service(storage_connection).create_queue(unique("q"))
    queue.send_message("ping")
    assert [message.content for message in queue.receive_messages()] == ["ping"]
    table = table_service(storage_connection).create_table(unique("t"))
    table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "value": 2})
    assert table.get_entity("p", "r")["value"] == 2


@pytest.mark.parametrize("partitions", [5, POINT_READS_UP_TO + 6])  # point reads, then one query of the key span
def test_read_rows_returns_the_named_partitions_row_and_only_theirs(storage_connection, partitions):
    table = table_service(storage_connection).create_table(f"rows{uuid.uuid4().hex[:10]}")
    named = [f"CAR-{k:04d}" for k in range(0, 2 * partitions, 2)]  # every other car: the span holds others
    for k in range(2 * partitions + 1):
        table.create_entity({"PartitionKey": f"CAR-{k:04d}", "RowKey": "profile", "K": k})
        table.create_entity({"PartitionKey": f"CAR-{k:04d}", "RowKey": "other", "K": -k})
    table.delete_entity(named[1], "profile")  # a named car without the row

    rows = read_rows(table, [*named, "CAR-9999"], "profile")

    assert sorted(rows) == sorted(set(named) - {named[1]})
    assert all(row["K"] == int(car.removeprefix("CAR-")) for car, row in rows.items())
    table.delete_table()
    assert read_rows(table, named, "profile") == {}  # no table yet reads as no rows
