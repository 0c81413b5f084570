"""The S3 blob store against the blob contract, plus what only S3 has: multipart uploads,
ranged reads, encryption and storage class, failures, presigned URLs.

Runs against moto_server started by the test session on loopback (tests/services.py); the
store talks to it over HTTP with SigV4, as to AWS.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import tracemalloc
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import requests


from gateway.config import SettingsError, load_settings  # noqa: E402
from storage.blob.s3 import S3BlobStore  # noqa: E402
from storage.errors import ObjectNotFound, Unavailable  # noqa: E402
from tests.contract.blob import BlobStoreContract  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.services import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY  # noqa: E402

pytestmark = pytest.mark.s3

MiB = 1024 * 1024


def make_store(endpoint_url: str, bucket: str, staging: Path, **kw) -> S3BlobStore:
    kw.setdefault("multipart_threshold", 5 * MiB)
    kw.setdefault("multipart_chunksize", 5 * MiB)
    kw.setdefault("read_ahead", 64 * 1024)
    return S3BlobStore(bucket, staging=staging, endpoint_url=endpoint_url, region=S3_REGION,
                       access_key_id=S3_ACCESS_KEY, secret_access_key=S3_SECRET_KEY, addressing_style="path", **kw)


def sigv4_query_signature(url: str, method: str, secret: str, headers: dict[str, str] | None = None) -> str:
    """The SigV4 signature of a presigned URL, computed here from the AWS specification
    (independently of botocore): moto does not check signatures, so we do."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = dict(query)

    def enc(text: str) -> str:
        return quote(text, safe="-_.~")

    canonical_query = "&".join(f"{k}={v}" for k, v in sorted((enc(k), enc(v)) for k, v in query
                                                                if k != "X-Amz-Signature"))
    signed = values["X-Amz-SignedHeaders"].split(";")
    present = {"host": parts.netloc, **{k.lower(): v for k, v in (headers or {}).items()}}
    canonical_headers = "".join(f"{name}:{present[name].strip()}\n" for name in signed)
    canonical_request = "\n".join([method, parts.path, canonical_query, canonical_headers, ";".join(signed),
                                   "UNSIGNED-PAYLOAD"])
    scope = values["X-Amz-Credential"].split("/", 1)[1]
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", values["X-Amz-Date"], scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


class TestS3Blob(BlobStoreContract):
    backend_class = S3BlobStore

    @pytest.fixture(params=["", "pacs/"], ids=["no-prefix", "prefix"])
    def store(self, request, moto_server, s3_bucket, tmp_path):
        store = make_store(moto_server.endpoint_url, s3_bucket, tmp_path / "staging", prefix=request.param)
        yield store
        store.close()

    def stored(self, moto_server, store, key: str) -> dict:
        return moto_server.client().head_object(Bucket=store.bucket, Key=store.object_name(key))

    # --- layout ------------------------------------------------------------------------------
    def test_objects_live_under_the_prefix(self, store, moto_server):
        self.put(store, "dicom/c1/1.2/1.2.3/1.2.3.4.abc.dcm", b"DICM")
        listed = moto_server.client().list_objects_v2(Bucket=store.bucket)["Contents"]
        assert [o["Key"] for o in listed] == [store.prefix + "dicom/c1/1.2/1.2.3/1.2.3.4.abc.dcm"]
        assert self.stored(moto_server, store, "dicom/c1/1.2/1.2.3/1.2.3.4.abc.dcm")["ContentType"] == \
            "application/dicom"

    def test_stores_sharing_a_bucket_under_other_prefixes_do_not_see_each_other(self, moto_server, s3_bucket,
                                                                                   tmp_path):
        a = make_store(moto_server.endpoint_url, s3_bucket, tmp_path / "a", prefix="a")
        b = make_store(moto_server.endpoint_url, s3_bucket, tmp_path / "b", prefix="b/")
        self.put(a, "k", b"a")
        assert list(a.keys()) == ["k"] and list(b.keys()) == []
        assert not b.exists("k")

    # --- large objects ---------------------------------------------------------------------------
    def test_large_object_is_uploaded_in_parts_without_buffering_it(self, moto_server, s3_bucket, tmp_path):
        store = make_store(moto_server.endpoint_url, s3_bucket, tmp_path / "staging", max_concurrency=2)
        data = os.urandom(MiB) * 36  # 36 MiB: 8 parts of 5 MiB (the minimum S3 allows)
        path = self.stage(store, data)
        tracemalloc.start()
        try:
            store.put_file("big.dcm", path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < len(data) / 2, f"peak {peak / MiB:.1f} MiB while uploading {len(data) / MiB:.0f} MiB"
        etag = self.stored(moto_server, store, "big.dcm")["ETag"]
        assert etag.strip('"').endswith("-8")  # a multipart upload's ETag counts its parts
        with store.open("big.dcm") as fh:
            digest = hashlib.sha256()
            while chunk := fh.read(MiB):
                digest.update(chunk)
            assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
            assert fh.requests <= 12  # not 36: ranged GETs grow (to 8 MiB) while reads are sequential
        store.close()

    def test_a_failed_part_leaves_no_object_and_no_upload(self, moto_server, s3_bucket, tmp_path):
        from botocore.awsrequest import AWSResponse

        class Body:
            def stream(self, **_):
                yield b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"

        def fail_part_3(request, **_):
            if "partNumber=3" in request.url:
                return AWSResponse(request.url, 500, {}, Body())
            return None

        store = make_store(moto_server.endpoint_url, s3_bucket, tmp_path / "staging", max_attempts=2,
                           max_concurrency=1)
        store.client.meta.events.register("before-send.s3.UploadPart", fail_part_3)
        path = self.stage(store, os.urandom(12 * MiB))
        with pytest.raises(Unavailable):
            store.put_file("broken.dcm", path)
        assert not store.exists("broken.dcm")
        assert moto_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
        store.close()

    # --- reading -----------------------------------------------------------------------------------
    def test_header_parsing_costs_one_request_and_a_frame_one_more(self, store):
        data = os.urandom(3 * MiB)
        self.put(store, "frames.dcm", data)
        with store.open("frames.dcm") as fh:
            for _ in range(200):  # pydicom reads a header in many small pieces
                fh.read(128)
            assert fh.requests == 1
            fh.seek(2 * MiB)
            assert fh.read(200_000) == data[2 * MiB:2 * MiB + 200_000]
            assert fh.requests == 2
            fh.seek(10)
            assert fh.read(10) == data[10:20]  # back before the buffer: one more GET
            assert fh.requests <= 3
            assert fh.read(0) == b""
            fh.seek(len(data) + 10)
            assert fh.read(5) == b""
            assert fh.tell() == len(data) + 10

    def test_pydicom_reads_a_header_and_frames_through_the_reader(self, store):
        import pydicom

        from tests.data import sample_file

        data = sample_file("CT_small.dcm").read_bytes()
        self.put(store, "ct.dcm", data)
        with store.open("ct.dcm") as fh:
            ds = pydicom.dcmread(fh)
            assert ds.SOPInstanceUID == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
            assert ds.pixel_array.shape == (128, 128)
            assert fh.requests == 1

    def test_open_of_a_deleted_object(self, store):
        self.put(store, "gone", b"x" * 100)
        store.delete("gone")
        with pytest.raises(ObjectNotFound):
            store.open("gone")

    # --- encryption and storage class ---------------------------------------------------------------
    def test_encryption_and_storage_class_from_settings(self, moto_server, s3_bucket, tmp_path):
        store = make_store(moto_server.endpoint_url, s3_bucket, tmp_path / "staging", sse="AES256",
                           storage_class="STANDARD_IA")
        self.put(store, "small.dcm", b"small")
        self.put(store, "large.dcm", os.urandom(11 * MiB))
        for key in ("small.dcm", "large.dcm"):
            head = self.stored(moto_server, store, key)
            assert head["ServerSideEncryption"] == "AES256"
            assert head["StorageClass"] == "STANDARD_IA"
        store.close()

    # --- failures ------------------------------------------------------------------------------------
    def test_unreachable_endpoint_is_unavailable(self, tmp_path):
        store = make_store(f"http://127.0.0.1:{free_port()}", "bucket", tmp_path / "staging", max_attempts=2,
                           connect_timeout=1)
        path = self.stage(store, b"x")
        for call in (store.ping, lambda: store.put_file("k", path), lambda: store.open("k"),
                     lambda: store.exists("k"), lambda: store.delete("k"), lambda: list(store.keys())):
            with pytest.raises(Unavailable):
                call()
        assert path.exists()  # not consumed: ingest discards it
        store.close()

    def test_missing_bucket_is_unavailable(self, moto_server, tmp_path):
        store = make_store(moto_server.endpoint_url, "no-such-bucket", tmp_path / "staging")
        with pytest.raises(Unavailable):
            store.ping()
        with pytest.raises(Unavailable):
            store.put_file("k", self.stage(store, b"x"))
        store.close()

    # --- presigned URLs ------------------------------------------------------------------------------
    def test_presigned_put_then_get(self, moto_server, s3_bucket, tmp_path):
        store = make_store(moto_server.endpoint_url, s3_bucket, tmp_path / "staging", sse="AES256",
                           storage_class="STANDARD_IA", prefix="p")
        request = store.presigned_put("masks/c1/m1.png", expires_in=300)
        assert request.method == "PUT" and request.expires_in == 300
        assert request.headers == {"Content-Type": "image/png", "x-amz-server-side-encryption": "AES256",
                                   "x-amz-storage-class": "STANDARD_IA"}
        response = requests.put(request.url, data=b"PNG bytes", headers=request.headers, timeout=10)
        assert response.status_code == 200, response.text
        with store.open("masks/c1/m1.png") as fh:
            assert fh.read() == b"PNG bytes"
        assert self.stored(moto_server, store, "masks/c1/m1.png")["ServerSideEncryption"] == "AES256"

        url = store.presigned_get_url("masks/c1/m1.png", expires_in=60, download_name="m1.png")
        response = requests.get(url, timeout=10)
        assert response.content == b"PNG bytes"
        assert 'filename="m1.png"' in response.headers["Content-Disposition"]
        ranged = requests.get(url, headers={"Range": "bytes=4-8"}, timeout=10)
        assert (ranged.status_code, ranged.content) == (206, b"bytes")
        store.close()

    def test_presigned_urls_are_sigv4_and_verify(self, store):
        url = store.presigned_get_url("dicom/c1/a b.dcm", expires_in=120)
        query = dict(parse_qsl(urlsplit(url).query))
        assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
        assert query["X-Amz-Expires"] == "120"
        assert query["X-Amz-Credential"].startswith(f"{S3_ACCESS_KEY}/") and f"/{S3_REGION}/s3/" in \
            query["X-Amz-Credential"]
        assert urlsplit(url).path.endswith("/" + store.prefix + "dicom/c1/a%20b.dcm")
        assert sigv4_query_signature(url, "GET", S3_SECRET_KEY) == query["X-Amz-Signature"]
        # Any change to what was signed gives another signature.
        assert sigv4_query_signature(url.replace("X-Amz-Expires=120", "X-Amz-Expires=99999"), "GET",
                                     S3_SECRET_KEY) != query["X-Amz-Signature"]
        assert sigv4_query_signature(url.replace("a%20b.dcm", "other.dcm"), "GET", S3_SECRET_KEY) != \
            query["X-Amz-Signature"]
        assert sigv4_query_signature(url, "PUT", S3_SECRET_KEY) != query["X-Amz-Signature"]
        assert sigv4_query_signature(url, "GET", "another-secret") != query["X-Amz-Signature"]

        put = store.presigned_put("up/x.dcm")
        put_query = dict(parse_qsl(urlsplit(put.url).query))
        assert put_query["X-Amz-Expires"] == str(store.presign_expiry)
        assert sigv4_query_signature(put.url, "PUT", S3_SECRET_KEY, put.headers) == put_query["X-Amz-Signature"]
        assert sigv4_query_signature(put.url, "PUT", S3_SECRET_KEY, {"Content-Type": "text/plain"}) != \
            put_query["X-Amz-Signature"]

    def test_presigned_put_signs_length_and_checksum(self, store):
        """moto accepts any body on a presigned PUT, so what AWS enforces is checked here: the
        length and the SHA-256 are signed headers, and other values give another signature."""
        data = b"\x89PNG mask"
        sha = hashlib.sha256(data).hexdigest()
        put = store.presigned_put("mask/c1/a/g/0000_t.png", expires_in=600, content_type="image/png",
                                  content_length=len(data), sha256=sha)
        query = dict(parse_qsl(urlsplit(put.url).query))
        assert query["X-Amz-Expires"] == "600"
        assert set(query["X-Amz-SignedHeaders"].split(";")) >= {"content-length", "content-type",
                                                                 "x-amz-checksum-sha256"}
        assert put.headers["x-amz-checksum-sha256"] == base64.b64encode(bytes.fromhex(sha)).decode()
        assert put.headers["Content-Length"] == str(len(data))
        assert sigv4_query_signature(put.url, "PUT", S3_SECRET_KEY, put.headers) == query["X-Amz-Signature"]
        for name, value in (("Content-Length", str(len(data) + 1)), ("Content-Type", "text/plain"),
                            ("x-amz-checksum-sha256", base64.b64encode(b"0" * 32).decode())):
            assert sigv4_query_signature(put.url, "PUT", S3_SECRET_KEY, {**put.headers, name: value}) != \
                query["X-Amz-Signature"], name

    @pytest.mark.parametrize("seconds", [0, 7 * 24 * 3600 + 1])
    def test_presigned_lifetime_limits(self, store, seconds):
        with pytest.raises(ValueError):
            store.presigned_get_url("k", expires_in=seconds)

    # --- settings ------------------------------------------------------------------------------------
    def test_from_settings(self, moto_server, s3_bucket, settings):
        values = {**dict(settings), **moto_server.settings(s3_bucket), "storage.s3_prefix": "gw",
                  "storage.s3_sse": "aes256", "storage.s3_storage_class": "intelligent_tiering",
                  "storage.s3_multipart_chunksize": 8 * MiB}
        store = S3BlobStore.from_settings(load_settings(overrides=values, environ={}))
        try:
            assert (store.bucket, store.prefix, store.endpoint_url) == (s3_bucket, "gw/", moto_server.endpoint_url)
            assert store.put_args == {"ServerSideEncryption": "AES256", "StorageClass": "INTELLIGENT_TIERING"}
            assert store.transfer.multipart_chunksize == 8 * MiB
            assert store.staging_dir() == settings.data_dir / "staging" and store.staging_dir().is_dir()
            store.ping()
        finally:
            store.close()
        assert load_settings(overrides=values, environ={}).masked()["storage.s3_secret_access_key"] == "********"

    def test_settings_checks(self, settings):
        with pytest.raises(ValueError, match="storage.s3_bucket"):
            S3BlobStore.from_settings(load_settings(overrides={"storage.blob_backend": "s3"}, environ={}))
        for name, value in (("storage.s3_sse", "rot13"), ("storage.s3_storage_class", "GLACIER"),
                            ("storage.s3_multipart_chunksize", 1024)):
            with pytest.raises(SettingsError, match=name):
                load_settings(overrides={name: value}, environ={})
