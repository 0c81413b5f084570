"""The image metadata store on DynamoDB, through pynamodb: the ``dynamodb`` entry point of
``gateway.metadata_stores`` (:class:`storage.base.MetadataStore`).

One table (``storage.dynamodb_table``, made by ``gateway metadata-table create``), on-demand
capacity. Items:

==================  ===========================  ==================================================
item                partition key ``pk``         sort key ``sk``
==================  ===========================  ==================================================
record              ``{clinic}#{study}``         ``{series}#{instance}#{variant}``
history version     ``{clinic}#{study}``         ``~H#{series}#{instance}#{variant}#{version:010d}``
tag (one per tag)   ``{clinic}#{study}``         ``~T#{tag}#{series}#{instance}#{variant}``
==================  ===========================  ==================================================

UIDs hold only digits and dots, which sort before ``~``: a study's records are ``sk < "~"``.
Global secondary indexes (all projecting every attribute), each sorted by ``gsi_date`` =
``{studyDate}#{study}#{series}#{instance}#{variant}`` (the search order):

- ``by_date``: ``gsi_clinic`` = ``{clinic}`` (records only): a clinic's records by study date;
- ``by_patient``: ``gsi_patient`` = ``{clinic}#{patientId}`` (records with a patient);
- ``by_tag``: ``gsi_tag`` = ``{clinic}#{tag}`` (tag items, whose records are then read);
- ``by_shared``: ``gsi_shared`` = ``{clinic}``, present on a record only while its mirrored
  share state names a share (a sparse index: only shared records are in it); a shared-state
  search reads it with the filter ``shared_until > now``, so a record whose shares expired
  is not reported even before its next mirror write.

The share state (``share`` JSON, ``shared_until``, ``share_stamp``, ``gsi_shared``) is
mirrored from the share store by :meth:`DynamoMetadataStore.set_share`: an ``UpdateItem``
that sets only those attributes (not the version), conditional on the record existing and
on no later mirror write (``share_stamp``) having come first. A record write puts the item
whole, carrying the share state it read, conditional on that ``share_stamp`` too: a mirror
write in between cancels it, and it is made again over the new share state. So neither
overwrites the other. Searches on a secondary index are eventually consistent, as
DynamoDB's indexes are.

Every write is one ``TransactWriteItems``: the record ``Put`` with a ``ConditionExpression``
(``attribute_not_exists(pk)`` for a create, ``version = :expected`` and the share stamp read
for an update), the history item, and the tag items put and deleted. A cancelled condition is a
:class:`storage.errors.VersionConflict` with the record read afterwards. Items stay under
DynamoDB's 400 KB (large annotation bodies are in the blob store already, see
:mod:`gateway.services.metadata`; a record that still does not fit is
:class:`storage.errors.TooLarge`). A transaction holds at most 100 items: 1 record, 1 history
item and at most 2 × :data:`MAX_TAGS` tag items.
"""
from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import replace
from typing import Iterable, Iterator

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.connection import Connection
from pynamodb.exceptions import DoesNotExist, PynamoDBException, TransactWriteError, UpdateError
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from storage.errors import ObjectNotFound, TooLarge, Unavailable, VersionConflict
from storage.metadata import (
    MetadataKey,
    MetadataQuery,
    MetadataRecord,
    merge_viewer_state,
    restore_status,
    shared_until,
    sort_key,
)

logger = logging.getLogger(__name__)

MAX_TAGS = 40
MAX_BODY_BYTES = 380_000  # under the 400 KB item limit, with room for the keys and attributes
_CONFLICT_ATTEMPTS = 5  # a transaction cancelled by a concurrent one on the same items is tried again


# The global secondary indexes: name → the attribute of their partition key (all sorted by gsi_date).
INDEXES = {"by_date": "gsi_clinic", "by_patient": "gsi_patient", "by_tag": "gsi_tag", "by_shared": "gsi_shared"}


def _share_text(share: dict | None) -> str | None:
    return json.dumps(share, separators=(",", ":"), sort_keys=True) if share else None


def _index(name: str, hash_name: str) -> type[GlobalSecondaryIndex]:
    meta = type("Meta", (), {"index_name": name, "projection": AllProjection()})
    return type(f"Index_{name}", (GlobalSecondaryIndex,), {
        "Meta": meta, hash_name: UnicodeAttribute(hash_key=True),
        "gsi_date": UnicodeAttribute(range_key=True)})


def _model(table: str, *, region: str | None, host: str | None, access_key: str | None, secret_key: str | None,
           attempts: int) -> type[Model]:
    """The pynamodb model of one table (a class per store: the table and endpoint are settings)."""
    meta = {"table_name": table, "max_retry_attempts": attempts, "connect_timeout_seconds": 5,
            "read_timeout_seconds": 10, "billing_mode": "PAY_PER_REQUEST"}
    if region:
        meta["region"] = region
    if host:
        meta["host"] = host
    if access_key:
        meta["aws_access_key_id"], meta["aws_secret_access_key"] = access_key, secret_key
    return type("MetadataItem", (Model,), {
        "Meta": type("Meta", (), meta),
        "pk": UnicodeAttribute(hash_key=True),
        "sk": UnicodeAttribute(range_key=True),
        "kind": UnicodeAttribute(),  # record, history, tag
        "clinic": UnicodeAttribute(),
        "study": UnicodeAttribute(),
        "series": UnicodeAttribute(),
        "sop": UnicodeAttribute(),
        "variant": UnicodeAttribute(),
        "version": NumberAttribute(null=True),
        "body": UnicodeAttribute(null=True),
        "gsi_date": UnicodeAttribute(null=True),
        "gsi_clinic": UnicodeAttribute(null=True),
        "gsi_patient": UnicodeAttribute(null=True),
        "gsi_tag": UnicodeAttribute(null=True),
        "share": UnicodeAttribute(null=True),
        "share_stamp": NumberAttribute(null=True),
        "shared_until": NumberAttribute(null=True),
        "gsi_shared": UnicodeAttribute(null=True),
        **{name: _index(name, hash_name)() for name, hash_name in INDEXES.items()},
    })


def _pk(clinic_id: str, study_uid: str) -> str:
    return f"{clinic_id}#{study_uid}"


def _sk(key: MetadataKey) -> str:
    return f"{key.series_uid}#{key.sop_uid}#{key.variant}"


def _history_prefix(key: MetadataKey) -> str:
    return f"~H#{_sk(key)}#"


class DynamoMetadataStore:
    """Image metadata in one DynamoDB table (see the module's documentation for its items)."""

    def __init__(self, table: str, *, region: str | None = None, host: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, attempts: int = 5):
        if not table:
            raise ValueError("storage.metadata_backend is 'dynamodb' but storage.dynamodb_table is empty")
        self.table = table
        self.region = region or "us-east-1"
        self.host = host
        self.Item = _model(table, region=self.region, host=host, access_key=access_key, secret_key=secret_key,
                           attempts=attempts)
        self._connection = Connection(region=self.region, host=host, max_retry_attempts=attempts,
                                      aws_access_key_id=access_key or None,
                                      aws_secret_access_key=secret_key or None)

    @classmethod
    def from_settings(cls, settings, *, index=None) -> "DynamoMetadataStore":
        return cls(settings["storage.dynamodb_table"],
                   region=settings["storage.dynamodb_region"] or settings["storage.s3_region"] or None,
                   host=settings["storage.dynamodb_endpoint_url"] or None,
                   access_key=settings["storage.dynamodb_access_key_id"] or None,
                   secret_key=settings["storage.dynamodb_secret_access_key"] or None,
                   attempts=settings["storage.dynamodb_max_attempts"])

    # --- the table -------------------------------------------------------------------------
    def create_table(self, *, wait: bool = True) -> bool:
        """Create the table and its indexes (on-demand capacity); False when it exists."""
        try:
            if self.Item.exists():
                return False
            self.Item.create_table(billing_mode="PAY_PER_REQUEST", wait=wait)
        except PynamoDBException as exc:
            raise Unavailable(f"DynamoDB table {self.table} cannot be created: {exc}") from exc
        return True

    def add_missing_indexes(self, *, wait: bool = True) -> list[str]:
        """Add the global secondary indexes an existing table lacks (a table made by an older
        version: ``by_shared``), one ``UpdateTable`` each as DynamoDB requires; their names.
        DynamoDB fills a new index from the items already there (backfilling)."""
        try:
            description = self.Item.describe_table()
            have = {i["IndexName"] for i in description.get("GlobalSecondaryIndexes", ())}
            added = []
            for name, hash_name in INDEXES.items():
                if name in have:
                    continue
                self._connection.client.update_table(
                    TableName=self.table,
                    AttributeDefinitions=[{"AttributeName": hash_name, "AttributeType": "S"},
                                          {"AttributeName": "gsi_date", "AttributeType": "S"}],
                    GlobalSecondaryIndexUpdates=[{"Create": {
                        "IndexName": name, "Projection": {"ProjectionType": "ALL"},
                        "KeySchema": [{"AttributeName": hash_name, "KeyType": "HASH"},
                                      {"AttributeName": "gsi_date", "KeyType": "RANGE"}]}}])
                added.append(name)
                while wait and self._index_status(name) != "ACTIVE":
                    time.sleep(1)
        except (PynamoDBException, BotoCoreError, ClientError) as exc:
            raise Unavailable(f"DynamoDB table {self.table}: indexes cannot be added: {exc}") from exc
        return added

    def _index_status(self, name: str) -> str | None:
        description = self._connection.client.describe_table(TableName=self.table)["Table"]
        return next((i.get("IndexStatus") for i in description.get("GlobalSecondaryIndexes", ())
                     if i["IndexName"] == name), None)

    def ping(self) -> None:
        try:
            self.Item.describe_table()
        except PynamoDBException as exc:
            raise Unavailable(f"DynamoDB table {self.table} unusable ({exc}); create it with "
                              "'gateway metadata-table create'") from exc

    def _unavailable(self, exc: Exception, what: str) -> Unavailable:
        return Unavailable(f"DynamoDB {what} on table {self.table} failed: {exc}")

    # --- items ---------------------------------------------------------------------------------
    def _record(self, item) -> MetadataRecord:
        share = json.loads(item.share) if item.kind == "record" and item.share else None
        return MetadataRecord.from_body(item.clinic, MetadataKey(item.study, item.series, item.sop, item.variant),
                                        int(item.version), json.loads(item.body), share=share,
                                        share_stamp=int(item.share_stamp or 0))

    def _items(self, record: MetadataRecord, version: int, old_tags: Iterable[str]):
        """The record item, its history item, the tag items to put and those to delete."""
        k, clinic = record.key, record.clinic_id
        body = json.dumps(record.body(), separators=(",", ":"), sort_keys=True)
        if len(body.encode()) > MAX_BODY_BYTES:
            raise TooLarge(f"{len(body.encode())} bytes of JSON, DynamoDB items hold at most 400 KB")
        tags = list(dict.fromkeys(record.tags))
        if len(tags) > MAX_TAGS:
            raise TooLarge(f"{len(tags)} tags, at most {MAX_TAGS}")
        common = {"pk": _pk(clinic, k.study_uid), "clinic": clinic, "study": k.study_uid, "series": k.series_uid,
                  "sop": k.sop_uid, "variant": k.variant, "gsi_date": sort_key(record)}
        until = record.shared_until
        item = self.Item(sk=_sk(k), kind="record", version=version, body=body, gsi_clinic=clinic,
                         gsi_patient=f"{clinic}#{record.patient_id}" if record.patient_id else None,
                         share=_share_text(record.share),
                         share_stamp=record.share_stamp or None, shared_until=until,
                         gsi_shared=clinic if until is not None else None, **common)
        history = self.Item(sk=f"{_history_prefix(k)}{version:010d}", kind="history", version=version, body=body,
                            **common)
        put_tags = [self.Item(sk=f"~T#{tag}#{_sk(k)}", kind="tag", gsi_tag=f"{clinic}#{tag}", **common)
                    for tag in tags]
        gone = [self.Item(sk=f"~T#{tag}#{_sk(k)}", kind="tag", **common) for tag in set(old_tags) - set(tags)]
        return item, history, put_tags, gone

    def _transaction(self, token: str):
        return TransactWrite(connection=self._connection, client_request_token=token)

    # --- reads ---------------------------------------------------------------------------------
    def get(self, clinic_id: str, key: MetadataKey) -> MetadataRecord | None:
        try:
            return self._record(self.Item.get(_pk(clinic_id, key.study_uid), _sk(key), consistent_read=True))
        except DoesNotExist:
            return None
        except PynamoDBException as exc:
            raise self._unavailable(exc, "get") from exc

    # --- writes --------------------------------------------------------------------------------
    def _write(self, record: MetadataRecord, expected_version: int | None, old_tags: Iterable[str]) -> MetadataRecord:
        """``record`` carries the share state read with ``expected_version``: the record item is
        put whole with it, conditional on the version *and* on that share state (its stamp),
        so a mirror write that came in between cancels the write, which is then made again
        over the new share state (the version still being the expected one)."""
        version = 1 if expected_version is None else expected_version + 1
        for _ in range(_CONFLICT_ATTEMPTS):
            new = record.next_version(version)
            if self._transact(new, expected_version, old_tags):
                return new
            current = self.get(record.clinic_id, record.key)
            if current is None or expected_version is None or current.version != expected_version:
                break
            record = replace(record, share=current.share, share_stamp=current.share_stamp)  # mirrored meanwhile
        else:
            raise Unavailable(f"{record.key.object_key}: kept meeting mirror writes of its share state")
        raise VersionConflict(f"{record.key.object_key}: expected version {expected_version}, found "
                              f"{current.version if current else 'none'}", current)

    def _transact(self, new: MetadataRecord, expected_version: int | None, old_tags: Iterable[str]) -> bool:
        """One write as a transaction; False when its condition failed."""
        item, history, put_tags, gone = self._items(new, new.version, old_tags)
        if expected_version is None:
            condition = self.Item.pk.does_not_exist()
        else:
            condition = (self.Item.version == expected_version) & (
                self.Item.share_stamp == new.share_stamp if new.share_stamp else self.Item.share_stamp.does_not_exist())
        # One token for every attempt: DynamoDB applies a transaction sent again with the same
        # token (within 10 minutes) once, so a retry after a lost answer or a 500 cannot apply it
        # twice, nor see its own first attempt as a conflict.
        token = uuid.uuid4().hex
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            try:
                with self._transaction(token) as tx:
                    tx.save(item, condition=condition)
                    tx.save(history)
                    for tag in put_tags:
                        tx.save(tag)
                    for tag in gone:
                        tx.delete(tag)
                return True
            except TransactWriteError as exc:
                codes = [r.code if r is not None else None for r in (exc.cancellation_reasons or [])]
                if "ConditionalCheckFailed" in codes:  # the record's condition, its only one
                    return False
                if not codes and attempt < _CONFLICT_ATTEMPTS:  # not cancelled: the service failed (a 500)
                    logger.info("DynamoDB transaction failed (%s), tried again", exc)
                    time.sleep(random.uniform(0.01, 0.05) * attempt)
                    continue
                if "TransactionConflict" not in codes:
                    raise self._unavailable(exc, "transaction") from exc
                # Another transaction on the same items was under way (concurrent writers of one
                # record): if it wrote the record, this write is stale; else try again.
                current = self.get(new.clinic_id, new.key)
                if (current.version if current else None) != expected_version:
                    return False
                if attempt == _CONFLICT_ATTEMPTS:
                    raise self._unavailable(exc, "transaction (kept meeting concurrent transactions)") from exc
                time.sleep(random.uniform(0.005, 0.02) * attempt)
            except PynamoDBException as exc:
                raise self._unavailable(exc, "transaction") from exc
        return False

    def put(self, record: MetadataRecord, *, expected_version: int | None) -> MetadataRecord:
        old_tags: list[str] = []
        if expected_version is not None:
            current = self.get(record.clinic_id, record.key)
            if current is None or current.version != expected_version:
                raise VersionConflict(f"{record.key.object_key}: expected version {expected_version}, found "
                                      f"{current.version if current else 'none'}", current)
            old_tags = current.tags  # right when the conditional write succeeds
            record = replace(record, share=current.share, share_stamp=current.share_stamp)
        else:
            record = replace(record, share=None, share_stamp=0)
        return self._write(record, expected_version, old_tags)

    def patch_viewer_state(self, clinic_id: str, key: MetadataKey, changes: dict, *, expected_version: int,
                           updated_by: str, now_ms: int) -> MetadataRecord:
        current = self.get(clinic_id, key)
        if current is None:
            raise ObjectNotFound(key.object_key)
        if current.version != expected_version:
            raise VersionConflict(f"{key.object_key}: expected version {expected_version}, found {current.version}",
                                  current)
        old_tags = list(current.tags)
        current.viewer_state = merge_viewer_state(current.viewer_state, changes)
        current.updated_at, current.updated_by = now_ms, updated_by
        return self._write(current, expected_version, old_tags)  # conditional on the version read

    # --- search ---------------------------------------------------------------------------------
    def _date_condition(self, attribute, query: MetadataQuery):
        low, high = query.date_from, query.date_to
        if low and high:
            return attribute.between(low, f"{high}#~")
        if low:
            return attribute >= low
        if high:
            return attribute <= f"{high}#~"
        return None

    def _candidates(self, query: MetadataQuery) -> Iterator[MetadataRecord]:
        """Records in search order, from the narrowest way in; the caller filters the rest."""
        clinic = query.clinic_id
        if query.study_uid is not None:
            prefix = f"{query.series_uid}#" if query.series_uid else None
            condition = self.Item.sk.startswith(prefix) if prefix else self.Item.sk < "~"
            yield from (self._record(i) for i in self.Item.query(_pk(clinic, query.study_uid), condition,
                                                                 scan_index_forward=False, consistent_read=True))
        elif query.shared:
            yield from (self._record(i) for i in self.Item.by_shared.query(
                clinic, self._date_condition(self.Item.gsi_date, query), scan_index_forward=False,
                filter_condition=self.Item.shared_until > query.now_ms))
        elif query.patient_id is not None:
            yield from (self._record(i) for i in self.Item.by_patient.query(
                f"{clinic}#{query.patient_id}", self._date_condition(self.Item.gsi_date, query),
                scan_index_forward=False))
        elif query.tag is not None:
            tags = self.Item.by_tag.query(f"{clinic}#{query.tag}",
                                          self._date_condition(self.Item.gsi_date, query),
                                          scan_index_forward=False)
            for tag in tags:
                record = self.get(clinic, MetadataKey(tag.study, tag.series, tag.sop, tag.variant))
                if record is not None:
                    yield record
        else:
            yield from (self._record(i) for i in self.Item.by_date.query(
                clinic, self._date_condition(self.Item.gsi_date, query), scan_index_forward=False))

    def search(self, query: MetadataQuery) -> list[MetadataRecord]:
        found: list[MetadataRecord] = []
        skipped = 0
        try:
            for record in self._candidates(query):
                if not query.matches(record):
                    continue
                if skipped < query.offset:
                    skipped += 1
                    continue
                found.append(record)
                if len(found) >= query.limit:
                    break
        except PynamoDBException as exc:
            raise self._unavailable(exc, "query") from exc
        return found

    # --- history, delete --------------------------------------------------------------------------
    def history(self, clinic_id: str, key: MetadataKey, *, limit: int = 100,
                before_version: int | None = None) -> list[MetadataRecord]:
        prefix = _history_prefix(key)
        condition = (self.Item.sk.between(prefix, f"{prefix}{before_version - 1:010d}") if before_version is not None
                     else self.Item.sk.startswith(prefix))
        try:
            items = self.Item.query(_pk(clinic_id, key.study_uid), condition, scan_index_forward=False,
                                    consistent_read=True, limit=limit)
            return [self._record(i) for i in items][:limit]
        except PynamoDBException as exc:
            raise self._unavailable(exc, "query") from exc

    def _set_share(self, item, share: dict | None, stamp: int) -> bool:
        """Set the share state of one record item unless it is gone or a later mirror write came first."""
        text = _share_text(share)
        until = shared_until(share)
        actions = [self.Item.share_stamp.set(stamp)]
        actions += [self.Item.share.set(text), self.Item.shared_until.set(until),
                    self.Item.gsi_shared.set(item.clinic)] if until is not None else \
            [self.Item.share.set(text) if text else self.Item.share.remove(), self.Item.shared_until.remove(),
             self.Item.gsi_shared.remove()]
        condition = self.Item.pk.exists() & (self.Item.share_stamp.does_not_exist()
                                             | (self.Item.share_stamp <= stamp))
        try:
            item.update(actions=actions, condition=condition)
            return True
        except UpdateError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise
            return False

    def set_share(self, clinic_id: str, study_uid: str, series_uid: str, share: dict | None, *, stamp: int) -> int:
        try:
            return sum(self._set_share(item, share, stamp) for item in self.Item.query(
                _pk(clinic_id, study_uid), self.Item.sk.startswith(f"{series_uid}#"), consistent_read=True))
        except PynamoDBException as exc:
            raise self._unavailable(exc, "update") from exc

    def restore(self, versions: list[MetadataRecord]) -> str:
        """History items first (idempotent puts, in batches: a record may have more versions than
        a transaction holds), then the record and its tags in one conditional transaction."""
        last = versions[-1]
        current = self.get(last.clinic_id, last.key)
        status = restore_status(current, last)
        try:
            if status != "already there":
                have = current.version if current else 0
                with self.Item.batch_write() as batch:
                    for version in versions:
                        if version.version > have:
                            batch.save(self._items(version, version.version, ())[1])
                item, _, put_tags, gone = self._items(last, last.version, current.tags if current else ())
                condition = (self.Item.pk.does_not_exist() if current is None
                             else self.Item.version == current.version)
                try:
                    with self._transaction(uuid.uuid4().hex) as tx:
                        tx.save(item, condition=condition)
                        for tag in put_tags:
                            tx.save(tag)
                        for tag in gone:
                            tx.delete(tag)
                except TransactWriteError as exc:
                    codes = [r.code if r is not None else None for r in (exc.cancellation_reasons or [])]
                    if "ConditionalCheckFailed" in codes:
                        now = self.get(last.clinic_id, last.key)
                        raise VersionConflict(f"{last.key.object_key}: written meanwhile (version "
                                              f"{now.version if now else 'none'})", now) from None
                    raise
            self._set_share(self.Item(pk=_pk(last.clinic_id, last.key.study_uid), sk=_sk(last.key),
                                      clinic=last.clinic_id), last.share, last.share_stamp)
        except PynamoDBException as exc:
            raise self._unavailable(exc, "restore") from exc
        return status

    def delete_records(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                       sop_uid: str | None = None) -> int:
        """A study: its whole partition. A series or an instance: its records and history by
        sort-key prefix, and the tag items those records name (a tag item's key starts with
        its tag)."""
        if sop_uid is not None and series_uid is None:
            raise ValueError("an instance is deleted within its series: give series_uid too")
        pk = _pk(clinic_id, study_uid)
        try:
            if series_uid is None:
                items = list(self.Item.query(pk, consistent_read=True))
            else:
                prefix = f"{series_uid}#" if sop_uid is None else f"{series_uid}#{sop_uid}#"
                items = list(self.Item.query(pk, self.Item.sk.startswith(prefix), consistent_read=True))
                tags = [self.Item(pk=pk, sk=f"~T#{tag}#{item.sk}") for item in items
                        for tag in dict.fromkeys(json.loads(item.body).get("tags") or ())]
                items += tags + list(self.Item.query(pk, self.Item.sk.startswith(f"~H#{prefix}"),
                                                     consistent_read=True))
            records = sum(item.kind == "record" for item in items)
            with self.Item.batch_write() as batch:
                for item in items:
                    batch.delete(item)
        except PynamoDBException as exc:
            raise self._unavailable(exc, "delete") from exc
        return records

    def close(self) -> None:
        """Nothing to close (botocore keeps its own pool)."""
