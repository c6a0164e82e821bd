"""Azurite starts on free ports and serves all three services the SDKs use."""

from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient


def test_blob_queue_and_table_answer_on_the_connection_string(storage_connection):
    blobs = BlobServiceClient.from_connection_string(storage_connection)
    container = blobs.create_container("azurite-smoke")
    container.upload_blob("hello.txt", b"hi")
    assert container.download_blob("hello.txt").readall() == b"hi"

    queues = QueueServiceClient.from_connection_string(storage_connection)
    queue = queues.create_queue("azurite-smoke")
    queue.send_message("ping")
    assert [m.content for m in queue.receive_messages()] == ["ping"]

    tables = TableServiceClient.from_connection_string(storage_connection)
    table = tables.create_table("azuritesmoke")
    table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "value": 1})
    assert table.get_entity("p", "r")["value"] == 1
