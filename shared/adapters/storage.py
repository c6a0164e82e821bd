"""Storage: the one place the app builds Azure Storage clients, and the few blob helpers it repeats.

A storage connection comes in one of two shapes, exactly as the Functions host reads them:

- a connection string in the setting itself (`AzureWebJobsStorage=...`), including the Azurite
  shorthand `UseDevelopmentStorage=true`;
- an identity-based connection: no secret, only settings under the name as a prefix
  (`AzureWebJobsStorage__blobServiceUri`, `__queueServiceUri`, `__tableServiceUri`, `__serviceUri`, or
  `__accountName`, optionally `__clientId` for a user-assigned managed identity), used with
  `DefaultAzureCredential`.

`resolve_connection` turns a setting name into one of these; `blob_service`, `queue_service` and
`table_service` turn either into an SDK client; `read_rows` reads one row of many partitions.
Everything else in `shared/` takes those clients as arguments, so tests hand in clients on a real Azurite.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableEntity, TableServiceClient
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueServiceClient

from shared.config.names import STORAGE_CONNECTION_SETTING
from shared.config.settings import AZURITE_CONNECTION, SettingsError

Service = Literal["blob", "queue", "table"]
SERVICES: tuple[Service, ...] = ("blob", "queue", "table")

ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (documented publicly by Microsoft; it only opens local emulators).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass(frozen=True)
class AzuriteEndpoints:
    """Where a running Azurite listens, and the connection string the Azure SDKs take."""

    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        base = f"http://127.0.0.1:{{}}/{ACCOUNT}"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base.format(self.blob_port)};"
            f"QueueEndpoint={base.format(self.queue_port)};"
            f"TableEndpoint={base.format(self.table_port)};"
        )


# Where `UseDevelopmentStorage=true` points: Azurite's default ports on loopback, the public dev account.
DEVELOPMENT_STORAGE = AzuriteEndpoints(blob_port=10000, queue_port=10001, table_port=10002)
_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")


@dataclass(frozen=True)
class IdentityConnection:
    """An identity-based connection to one storage service: its URI and the credential to present."""

    service: Service
    service_uri: str
    client_id: str | None  # a user-assigned managed identity; None means the system-assigned one
    credential: TokenCredential


StorageConnection = str | IdentityConnection


def resolve_connection(
    setting: str,
    service: Service,
    environ: Mapping[str, str] | None = None,
    default: str | None = None,
) -> StorageConnection:
    """The connection named `setting` for `service`, read the way the Functions host reads it.

    An exact setting wins (a connection string); otherwise the `<setting>__...` identity settings give
    the service URI: `__<service>ServiceUri`, then `__serviceUri` (the Blob and Queue extensions' alias),
    then `__accountName` (public-cloud endpoints). With none of them, `default` is used if given;
    else `SettingsError` names the setting and what it looked for. Never puts a connection string
    into an error, since it holds the account key.
    """
    if service not in SERVICES:
        raise ValueError(f"service must be one of {SERVICES}, got {service!r}")
    env = os.environ if environ is None else environ

    def value(name: str) -> str | None:
        return env.get(name, "").strip() or None

    connection_string = value(setting)
    if connection_string:
        return connection_string
    uri_settings = [f"{setting}__{service}ServiceUri"]
    if service != "table":
        uri_settings.append(f"{setting}__serviceUri")
    for name in uri_settings:
        uri = value(name)
        if uri:
            return _identity_connection(service, _checked_uri(name, uri), value(f"{setting}__clientId"))
    account = value(f"{setting}__accountName")
    if account:
        if not _ACCOUNT_NAME.fullmatch(account):
            raise SettingsError(
                f"{setting}__accountName must be a storage account name (3-24 lowercase letters and digits), "
                f"got {account!r}"
            )
        uri = f"https://{account}.{service}.core.windows.net"
        return _identity_connection(service, uri, value(f"{setting}__clientId"))
    if default is not None:
        return default
    raise SettingsError(
        f"{setting} is not set: give it a connection string, or set {' or '.join(uri_settings)} "
        f"or {setting}__accountName for an identity-based connection"
    )


def app_storage_connection(service: Service, environ: Mapping[str, str] | None = None) -> StorageConnection:
    """The app's own storage account (`AzureWebJobsStorage`) for `service`; Azurite when nothing is set.

    Unlike `Settings.storage_connection`, this also sees identity-based settings, so a deployment with
    `AzureWebJobsStorage__blobServiceUri` and no connection string reaches Azure, not the local default.
    """
    return resolve_connection(STORAGE_CONNECTION_SETTING, service, environ, default=AZURITE_CONNECTION)


def blob_service(connection: StorageConnection) -> BlobServiceClient:
    """A Blob service client from a connection string or an identity-based connection."""
    return _service_client(BlobServiceClient, "blob", connection)


def queue_service(connection: StorageConnection) -> QueueServiceClient:
    """A Queue service client from a connection string or an identity-based connection."""
    return _service_client(QueueServiceClient, "queue", connection)


def table_service(connection: StorageConnection) -> TableServiceClient:
    """A Table service client from a connection string or an identity-based connection."""
    return _service_client(TableServiceClient, "table", connection)


def development_storage(connection: str) -> str:
    """Expand the `UseDevelopmentStorage=true` shorthand into Azurite's full connection string.

    The three SDKs disagree on the shorthand: Blob and Queue reject `UseDevelopmentStorage=True`, Table
    rejects a trailing `;`. Expanding it here gives all three the same explicit endpoints
    (127.0.0.1:10000/10001/10002, account devstoreaccount1). Any other string is returned unchanged.
    """
    shorthand = connection.replace(" ", "").rstrip(";").lower()
    return DEVELOPMENT_STORAGE.connection_string if shorthand == "usedevelopmentstorage=true" else connection


# --- blob helpers -------------------------------------------------------------------------------------


def ensure_container(service: BlobServiceClient, name: str) -> ContainerClient:
    """The container `name`, created if it does not exist yet (safe to call from many workers at once)."""
    container = service.get_container_client(name)
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    return container


def upload_creating_container(service: BlobServiceClient, container_name: str, name: str, data: bytes) -> None:
    """Write (overwrite) a blob, creating its container only when the write finds it missing: for a path
    that writes on every event batch, one round trip instead of ensure_container's two."""
    container = service.get_container_client(container_name)
    try:
        upload_bytes(container, name, data)
    except ResourceNotFoundError as error:
        if error.error_code != "ContainerNotFound":
            raise
        upload_bytes(ensure_container(service, container_name), name, data)


def upload_bytes(
    container: ContainerClient,
    name: str,
    data: bytes,
    *,
    overwrite: bool = True,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a blob (with `metadata`, if given); with `overwrite=False` an existing blob raises
    `ResourceExistsError` (If-None-Match)."""
    container.upload_blob(name, data, overwrite=overwrite, metadata=metadata)


def download_bytes(container: ContainerClient, name: str) -> bytes | None:
    """A blob's content, or None when the blob (or its container) does not exist."""
    try:
        return container.download_blob(name).readall()
    except ResourceNotFoundError:
        return None


def upload_json(
    container: ContainerClient, name: str, value: Any, *, overwrite: bool = True, metadata: dict[str, str] | None = None
) -> None:
    """Write `value` as a UTF-8 JSON blob (with `metadata`, if given)."""
    upload_bytes(container, name, json.dumps(value, indent=2).encode(), overwrite=overwrite, metadata=metadata)


def download_json(container: ContainerClient, name: str) -> Any | None:
    """A JSON blob's value, or None when the blob (or its container) does not exist."""
    data = download_bytes(container, name)
    return None if data is None else json.loads(data)


def upload_file(container: ContainerClient, name: str, path: Path, *, overwrite: bool = True) -> None:
    """Stream a local file into a blob (model files can be large: never read whole into memory here)."""
    with open(path, "rb") as stream:
        container.upload_blob(name, stream, overwrite=overwrite)


def download_file(container: ContainerClient, name: str, path: Path) -> None:
    """Stream a blob into a local file; a missing blob raises `ResourceNotFoundError`."""
    with open(path, "wb") as stream:
        container.download_blob(name).readinto(stream)


# Up to this many partitions `read_rows` makes a point read of each; past it, one query over the span of
# their keys, which Azure Tables answer in pages of up to 1,000 rows: a nightly pass over the fleet then
# costs pages, not a round trip per car (README, "Nightly half at fleet scale").
POINT_READS_UP_TO = 64


def read_rows(table: TableClient, partitions: Iterable[str], row_key: str) -> dict[str, TableEntity]:
    """The row `row_key` of each partition named, by partition key; partitions without it (or no table) absent."""
    wanted = sorted(set(partitions))
    if len(wanted) <= POINT_READS_UP_TO:
        rows = {}
        for partition in wanted:
            with contextlib.suppress(ResourceNotFoundError):
                rows[partition] = table.get_entity(partition, row_key)
        return rows
    query = "PartitionKey ge @first and PartitionKey le @last and RowKey eq @row"
    keep = set(wanted)
    try:
        found = table.query_entities(query, parameters={"first": wanted[0], "last": wanted[-1], "row": row_key})
        return {row["PartitionKey"]: row for row in found if row["PartitionKey"] in keep}
    except ResourceNotFoundError:  # no table yet
        return {}


def list_blob_names(container: ContainerClient, prefix: str = "") -> list[str]:
    """Names of the blobs starting with `prefix`, in name order; empty when the container does not exist."""
    try:
        return list(container.list_blob_names(name_starts_with=prefix or None))
    except ResourceNotFoundError:
        return []


def queue_length(service: QueueServiceClient, name: str) -> int:
    """The approximate number of messages on a queue (Queue storage counts them); 0 when it does not exist."""
    try:
        return int(service.get_queue_client(name).get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0


# --- internals ----------------------------------------------------------------------------------------


def _service_client(client_class, service: Service, connection: StorageConnection):
    """Build `client_class` the same way for all three services (their constructors share a shape)."""
    if isinstance(connection, IdentityConnection):
        if connection.service != service:
            raise ValueError(f"a {connection.service} connection cannot build a {service} client")
        return client_class(connection.service_uri, credential=connection.credential)
    if not connection.strip():
        raise SettingsError("storage connection string is empty")
    return client_class.from_connection_string(development_storage(connection))


def _checked_uri(setting: str, uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{setting} must be an http(s) URL of the storage service, got {uri!r}")
    return uri.rstrip("/")


def _identity_connection(service: Service, uri: str, client_id: str | None) -> IdentityConnection:
    """Authenticate as the app's managed identity (a user-assigned one when `__clientId` is set) in Azure,
    or as the developer's Azure CLI / VS Code login elsewhere: that is what DefaultAzureCredential tries."""
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(managed_identity_client_id=client_id)
    return IdentityConnection(service, uri, client_id, credential)
