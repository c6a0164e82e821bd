"""The hand-built entity-group transaction, against a real Azurite: what lands, what is refused, and why."""

from __future__ import annotations

import uuid

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient

from shared.adapters.tables import EntityWrite, TransactionFailed, submit_writes


@pytest.fixture
def table(storage_connection) -> TableClient:
    service = TableServiceClient.from_connection_string(storage_connection)
    return service.create_table(f"tx{uuid.uuid4().hex[:12]}")


def entity(row: str, **values) -> dict:
    return {"PartitionKey": "shard00", "RowKey": row, **values}


def test_creates_and_replaces_land_with_their_types_and_the_etags_the_service_gives(table):
    [created] = submit_writes(table, [EntityWrite(entity("a", Text="[1,2]", Count=7, Rated=200.0), None)])
    assert created == table.get_entity("shard00", "a").metadata["etag"]

    [replaced] = submit_writes(table, [EntityWrite(entity("a", Text="[3]", Ratio=0.1), created)])

    stored = table.get_entity("shard00", "a")
    assert replaced == stored.metadata["etag"] != created
    assert (stored["Text"], stored["Ratio"]) == ("[3]", 0.1)
    assert "Count" not in stored, "a replace, not a merge"


def test_a_merge_updates_only_what_it_names_and_needs_the_etag(table):
    [created] = submit_writes(table, [EntityWrite(entity("a", State="delivering", Alert="{}"), None)])

    [merged] = submit_writes(table, [EntityWrite(entity("a", State="delivered"), created, merge=True)])

    stored = table.get_entity("shard00", "a")
    assert (stored["State"], stored["Alert"], stored.metadata["etag"]) == ("delivered", "{}", merged)
    with pytest.raises(TransactionFailed) as failed:
        submit_writes(table, [EntityWrite(entity("a", State="failed"), created, merge=True)])
    assert (failed.value.status, failed.value.code) == (412, "UpdateConditionNotSatisfied")
    with pytest.raises(ValueError, match="give the ETag"):
        EntityWrite(entity("a", State="failed"), None, merge=True)


def test_values_keep_their_types(table):
    submit_writes(table, [EntityWrite(entity("a", Count=7, Rated=200.0, Missing=float("nan")), None)])

    stored = table.get_entity("shard00", "a")
    assert (stored["Count"], stored["Rated"]) == (7, 200.0)
    assert isinstance(stored["Rated"], float), "200.0 must stay a double, not become an Int32"
    assert stored["Missing"] != stored["Missing"], "NaN is a double too"
    with pytest.raises(TypeError, match="Big: 1099511627776 is not a string, a 32-bit integer or a float"):
        submit_writes(table, [EntityWrite(entity("b", Big=2**40), None)])


def test_keys_with_characters_urls_and_odata_escape(table):
    row = "PACK%2F7'x%23"  # a percent-encoded id with a quote, as battery_state makes keys
    [etag] = submit_writes(table, [EntityWrite(entity(row, Text="one"), None)])

    submit_writes(table, [EntityWrite(entity(row, Text="two"), etag)])

    assert table.get_entity("shard00", row)["Text"] == "two"


def test_a_stale_etag_fails_the_whole_transaction_naming_the_operation(table):
    first, second = submit_writes(table, [EntityWrite(entity("a", V="1"), None), EntityWrite(entity("b", V="1"), None)])
    submit_writes(table, [EntityWrite(entity("b", V="other writer"), second)])

    with pytest.raises(TransactionFailed) as failed:
        submit_writes(table, [EntityWrite(entity("a", V="2"), first), EntityWrite(entity("b", V="2"), second)])

    assert (failed.value.status, failed.value.code, failed.value.index) == (412, "UpdateConditionNotSatisfied", 1)
    assert table.get_entity("shard00", "a")["V"] == "1", "all or nothing: the first write did not land either"
    assert table.get_entity("shard00", "b")["V"] == "other writer"


def test_creating_an_entity_that_exists_fails(table):
    submit_writes(table, [EntityWrite(entity("a", V="1"), None)])

    with pytest.raises(TransactionFailed) as failed:
        submit_writes(table, [EntityWrite(entity("a", V="2"), None)])

    assert failed.value.code == "EntityAlreadyExists"
    assert table.get_entity("shard00", "a")["V"] == "1"


def test_replacing_a_deleted_entity_or_writing_to_a_missing_table_fails(table, storage_connection):
    [etag] = submit_writes(table, [EntityWrite(entity("a", V="1"), None)])
    table.delete_entity("shard00", "a")

    with pytest.raises(TransactionFailed) as deleted:
        submit_writes(table, [EntityWrite(entity("a", V="2"), etag)])
    missing = TableClient.from_connection_string(storage_connection, f"missing{uuid.uuid4().hex[:8]}")
    with pytest.raises(TransactionFailed) as no_table:
        submit_writes(missing, [EntityWrite(entity("a", V="1"), None)])

    assert deleted.value.code == "ResourceNotFound"
    assert no_table.value.code == "TableNotFound"
    with pytest.raises(ResourceNotFoundError):
        table.get_entity("shard00", "a")


def test_a_full_transaction_of_100_writes_lands(table):
    etags = submit_writes(table, [EntityWrite(entity(f"r{i:03d}", V=str(i)), None) for i in range(100)])

    stored = {e["RowKey"]: e.metadata["etag"] for e in table.query_entities("PartitionKey eq 'shard00'")}
    assert etags == [stored[f"r{i:03d}"] for i in range(100)]


def test_nothing_to_write_sends_nothing():
    assert submit_writes(None, []) == []
