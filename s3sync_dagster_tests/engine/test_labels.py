"""Labels (pipeline/chroma/labels.py): user metadata, tags and readers from S3 on every chunk; a change of them alone
updates the chunks' metadata without a GET or an embedding. Real moto over HTTP, embedded Chroma."""

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from s3sync_dagster.pipeline.s3.events import Ignored, SyncRequest, parse_message
from s3sync_dagster.pipeline.s3.objects import ObjectInfo
from s3sync_dagster.pipeline.s3.poll import InMemoryStore, PollState
from s3sync_dagster.pipeline.spec import SourceSpec
from s3sync_dagster.pipeline.sync.stages import sync_keys, sync_object
from s3sync_dagster_tests.conftest import CountingEmbedder


@pytest.fixture
def spec(bucket: str) -> SourceSpec:
    return SourceSpec(
        name="docs", bucket_name=bucket, collection_name="labels-test", chunking_mode="lines", max_lines=2,
        object_metadata=("team",), object_tags=("cls",), readers_tag="readers",
    )  # fmt: skip


@pytest.fixture
def collection(chroma_client: Any, embedding_function: Any) -> Any:
    return chroma_client.get_or_create_collection("labels-test", embedding_function=embedding_function)


@pytest.fixture
def requests(s3: Any) -> Iterator[Counter[str]]:
    """The S3 operations the client sends (botocore's own event hook on the real client), by name."""
    sent: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        sent[model.name] += 1

    s3.meta.events.register("before-call.s3", count, unique_id="test-labels-count")
    yield sent
    s3.meta.events.unregister("before-call.s3", unique_id="test-labels-count")


def metadatas(collection: Any, object_key: str) -> list[dict[str, Any]]:
    return list(collection.get(where={"object_key": object_key}, include=["metadatas"])["metadatas"])


def put(s3: Any, bucket: str, key: str, text: str, team: str | None = None, tags: str = "") -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode(), Metadata={"team": team} if team else {}, Tagging=tags)


TEXT = "one\ntwo\nthree\nfour\nfive\n"  # three chunks of two lines


def test_tags_metadata_and_readers_reach_every_chunk(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    put(s3, spec.bucket_name, "a.txt", TEXT, team="finance", tags="cls=secret&readers=bob%2B%20alice%2Bbob%2B")
    report = sync_object(s3, spec, lambda _: collection, embedder, "a.txt")
    assert report.status == "indexed" and report.chunk_count == 3
    for metadata in metadatas(collection, "a.txt"):
        assert metadata["meta_team"] == "finance"
        assert metadata["tag_cls"] == "secret"
        assert metadata["readers"] == ["alice", "bob"]  # split on '+', stripped, empty dropped, sorted, unique

    put(s3, spec.bucket_name, "b.txt", TEXT)  # no metadata, no tags: no key at all
    sync_object(s3, spec, lambda _: collection, embedder, "b.txt")
    assert all(not {"meta_team", "tag_cls", "readers"} & set(m) for m in metadatas(collection, "b.txt"))


def test_a_tag_change_alone_updates_the_chunks_without_get_or_embedding(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder, requests: Counter[str]
) -> None:
    put(s3, spec.bucket_name, "a.txt", TEXT, team="finance", tags="cls=secret&readers=alice")
    sync_object(s3, spec, lambda _: collection, embedder, "a.txt")
    embedded = len(embedder.texts)
    s3.put_object_tagging(Bucket=spec.bucket_name, Key="a.txt", Tagging={"TagSet": [{"Key": "cls", "Value": "public"}]})
    requests.clear()
    report = sync_keys(s3, spec, lambda _: collection, embedder, ["a.txt"])[0]
    assert report.status == "indexed", report.message
    assert report.message == "labels updated: 3 chunk(s), nothing re-embedded"
    assert report.chunks_metadata_only == 3 and report.chunks_embedded == 0 and report.chunks_written == 0
    assert len(embedder.texts) == embedded
    assert requests["GetObject"] == 0 and requests["GetObjectTagging"] >= 1
    found = metadatas(collection, "a.txt")
    assert [m["tag_cls"] for m in found] == ["public"] * 3
    assert all("readers" not in m for m in found)  # the readers tag is gone and no default_readers: no key
    assert all(m["meta_team"] == "finance" for m in found)

    # A copy in place with new user metadata keeps a single-part object's ETag: the metadata alone follows.
    s3.copy_object(
        Bucket=spec.bucket_name, Key="a.txt", CopySource={"Bucket": spec.bucket_name, "Key": "a.txt"},
        Metadata={"team": "legal"}, MetadataDirective="REPLACE",
    )  # fmt: skip
    report = sync_object(s3, spec, lambda _: collection, embedder, "a.txt")
    assert report.chunks_metadata_only == 3 and len(embedder.texts) == embedded
    assert [m["meta_team"] for m in metadatas(collection, "a.txt")] == ["legal"] * 3
    again = sync_object(s3, spec, lambda _: collection, embedder, "a.txt")
    assert again.status == "unchanged"


def test_default_readers_and_a_bad_principal_fails_its_key_alone(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    spec = dataclasses.replace(spec, default_readers=("group:staff",))
    put(s3, spec.bucket_name, "untagged.txt", TEXT)
    put(s3, spec.bucket_name, "empty.txt", TEXT, tags="readers=")
    put(s3, spec.bucket_name, "bad.txt", TEXT, tags="readers=alice%2Bbob%20smith")
    reports = {
        r.object_key: r
        for r in sync_keys(s3, spec, lambda _: collection, embedder, ["bad.txt", "empty.txt", "untagged.txt"])
    }
    assert reports["untagged.txt"].status == reports["empty.txt"].status == "indexed"
    for key in ("untagged.txt", "empty.txt"):
        assert all(m["readers"] == ["group:staff"] for m in metadatas(collection, key))
    bad = reports["bad.txt"]
    assert bad.status == "failed"
    assert "object 'bad.txt'" in bad.message and "tag 'readers'" in bad.message and "'bob smith'" in bad.message
    assert "principal" in bad.message
    assert metadatas(collection, "bad.txt") == []


def test_user_metadata_may_not_write_a_label(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder
) -> None:
    put(s3, spec.bucket_name, "a.txt", TEXT)
    with pytest.raises(ValueError, match="'readers' is reserved"):
        sync_object(s3, spec, lambda _: collection, embedder, "a.txt", user_metadata={"readers": ["eve"]})
    with pytest.raises(ValueError, match="'tag_cls' is the source's label"):
        sync_object(s3, spec, lambda _: collection, embedder, "a.txt", user_metadata={"tag_cls": "x"})
    # A meta_/tag_ key the source does not configure is the user's own.
    report = sync_object(s3, spec, lambda _: collection, embedder, "a.txt", user_metadata={"tag_other": "x"})
    assert report.status == "indexed"


def test_a_source_without_labels_asks_for_no_tags(
    s3: Any, bucket: str, collection: Any, embedder: CountingEmbedder, requests: Counter[str]
) -> None:
    plain = SourceSpec(
        name="docs", bucket_name=bucket, collection_name="labels-test", chunking_mode="lines", max_lines=2
    )
    put(s3, bucket, "a.txt", TEXT, team="finance", tags="cls=secret")
    sync_object(s3, plain, lambda _: collection, embedder, "a.txt")
    assert requests["GetObjectTagging"] == 0 and requests["GetObject"] == 1
    assert all(not {"meta_team", "tag_cls", "readers"} & set(m) for m in metadatas(collection, "a.txt"))
    s3.put_object_tagging(Bucket=bucket, Key="a.txt", Tagging={"TagSet": [{"Key": "cls", "Value": "public"}]})
    assert sync_object(s3, plain, lambda _: collection, embedder, "a.txt").status == "unchanged"
    assert requests["GetObjectTagging"] == 0


def s3_event(key: str, name: str) -> str:
    record = {"eventSource": "aws:s3", "eventName": name, "s3": {"bucket": {"name": "bkt"}, "object": {"key": key}}}
    return json.dumps({"Records": [record]})


def eventbridge(key: str, detail_type: str, **more: str) -> str:
    detail = {"bucket": {"name": "bkt"}, "object": {"key": key}, **more}
    return json.dumps({"detail-type": detail_type, "source": "aws.s3", "detail": detail})


@pytest.mark.parametrize(
    "body",
    [
        s3_event("docs/a.txt", "ObjectTagging:Put"),
        s3_event("docs/a.txt", "ObjectTagging:Delete"),
        eventbridge("docs/a.txt", "Object Tags Added"),
        eventbridge("docs/a.txt", "Object Tags Deleted"),
        eventbridge("docs/a.txt", "Object Tags Added", reason="PutObjectTagging"),  # shown as "... (reason)"
    ],
)
def test_tag_events_index_the_key_of_a_source_with_tags(body: str) -> None:
    [item] = parse_message(body, "bkt", "docs/", tag_events=True)
    assert isinstance(item, SyncRequest) and item.action == "index" and item.object_key == "docs/a.txt"
    [ignored] = parse_message(body, "bkt", "docs/")  # a source whose chunks carry no tags
    assert isinstance(ignored, Ignored) and "needs no sync" in ignored.reason


def test_the_poll_sees_a_copy_in_place_only_where_metadata_is_indexed() -> None:
    """A copy in place with new metadata keeps the ETag and changes LastModified (a listing shows no metadata)."""
    before = ObjectInfo("a.txt", 5, "etag-1", "2026-01-01T00:00:00+00:00")
    copied = dataclasses.replace(before, last_modified="2026-01-02T00:00:00+00:00")
    for last_modified, seen in ((True, ["a.txt"]), (False, [])):
        state = PollState(InMemoryStore())
        assert state.observe([before], last_modified=last_modified) == ["a.txt"]
        state.finish_pass()
        assert state.observe([copied], last_modified=last_modified) == seen


def test_label_updates_in_a_sync_of_many_keys(
    s3: Any, spec: SourceSpec, collection: Any, embedder: CountingEmbedder, requests: Counter[str]
) -> None:
    """Many keys: read ahead on the staging thread (pipeline/sync/staging.py), where the label update is written."""
    object_keys = [f"k{n}.txt" for n in range(6)]
    for key in object_keys:
        put(s3, spec.bucket_name, key, f"{key}\n{TEXT}", tags="cls=a")
    assert {r.status for r in sync_keys(s3, spec, lambda _: collection, embedder, object_keys)} == {"indexed"}
    embedded = len(embedder.texts)
    for key in object_keys[::2]:
        s3.put_object_tagging(Bucket=spec.bucket_name, Key=key, Tagging={"TagSet": [{"Key": "cls", "Value": "b"}]})
    requests.clear()
    reports = {r.object_key: r for r in sync_keys(s3, spec, lambda _: collection, embedder, object_keys)}
    assert requests["GetObject"] == 0 and len(embedder.texts) == embedded
    for n, key in enumerate(object_keys):
        assert reports[key].status == ("indexed" if n % 2 == 0 else "unchanged"), reports[key].message
        assert {m["tag_cls"] for m in metadatas(collection, key)} == {"b" if n % 2 == 0 else "a"}
