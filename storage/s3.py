"""Result storage on AWS S3 or any S3-compatible server, through boto3 (run in threads: it
blocks). Without an endpoint URL, boto3 finds AWS's endpoint, credentials and region itself
(its default chain: environment, shared config, instance or task role)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING

import boto3
import botocore.config
import botocore.exceptions

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


# How long a presigned result URL is valid; a URL is handed out during its first half only.
PRESIGN_SECONDS = 3600
PRESIGN_CACHE_SIZE = 50_000


class StorageUnavailable(Exception):
    """The result store cannot be reached or used; the message says where and why."""


def result_key(task_id_hex: str, index: int, extension: str) -> str:
    """Deterministic, so a retried upload overwrites instead of leaving a second copy."""
    return f"results/{task_id_hex}/{index}.{extension}"


class ResultStore:
    def __init__(
        self,
        *,
        endpoint_url: str | None,
        bucket: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        region: str | None,
        connect_timeout: float = 10,
        max_attempts: int = 3,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        # key -> (presigned URL, until when to hand it out); oldest first.
        self._urls: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # keys being signed now, for other requests to wait on; the one signing thread.
        self._signing: dict[str, asyncio.Future[str]] = {}
        self._signer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="presign")
        self._batches: set[asyncio.Task[None]] = set()
        self._client: S3Client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
            config=botocore.config.Config(
                # S3-compatible stores want path-style URLs; AWS prefers virtual hosts.
                s3={"addressing_style": "path" if endpoint_url else "auto"},
                signature_version="s3v4",
                connect_timeout=connect_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
            ),
        )

    async def ensure_bucket(self, *, create: bool = True) -> None:
        """The bucket exists (made when missing and `create`); raises StorageUnavailable.

        Production never creates one: a typo in the bucket's name must stop the process, not
        make a new bucket with default (possibly public) settings."""

        def check() -> None:
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except botocore.exceptions.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if not create or code not in ("404", "NoSuchBucket"):
                    raise StorageUnavailable(self._describe(exc)) from exc
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except botocore.exceptions.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise StorageUnavailable(self._describe(exc)) from exc

        try:
            await asyncio.to_thread(check)
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageUnavailable(self._describe(exc)) from exc

    async def probe(self, key: str) -> None:
        """Put, read back and delete one small object: the bucket is writable, not only
        visible (`taskhook check`). Raises StorageUnavailable."""
        body = b"taskhook check " + key.encode()

        def round_trip() -> None:
            # Some stores (SeaweedFS) make a missing bucket on the first put: ask first.
            self._client.head_bucket(Bucket=self.bucket)
            self._client.put_object(Bucket=self.bucket, Key=key, Body=body)
            try:
                read = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            finally:
                self._client.delete_object(Bucket=self.bucket, Key=key)
            if read != body:
                raise StorageUnavailable(f"read back {len(read)} bytes instead of {len(body)}")

        try:
            await asyncio.to_thread(round_trip)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StorageUnavailable(self._describe(exc)) from exc

    def where(self) -> str:
        """The store in words, for logs and errors: never a credential."""
        place = self.endpoint_url or "AWS S3"
        return f"bucket {self.bucket!r} at {place}"

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = error.get("Message") or error.get("Code") or "error"
            return f"{self.where()}: HTTP {status} {detail}"
        return f"{self.where()}: {exc}"

    async def upload(self, key: str, body: IO[bytes], *, content_type: str) -> None:
        await asyncio.to_thread(
            self._client.upload_fileobj,
            body,
            self.bucket,
            key,
            ExtraArgs={"ContentType": content_type},
        )

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete these objects (absent ones are no error: deleting twice is harmless), a
        thousand per request, the most one DeleteObjects takes."""

        def remove(chunk: list[str]) -> None:
            try:
                answer = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True},
                )
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise StorageUnavailable(self._describe(exc)) from exc
            failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                raise StorageUnavailable(
                    f"{self.where()}: {len(failed)} object(s) not deleted, e.g. "
                    f"{failed[0].get('Key')}: {failed[0].get('Code')}"
                )

        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 1000):
            await asyncio.to_thread(remove, unique[start : start + 1000])

    async def read(self, key: str) -> bytes:
        def get() -> bytes:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

        return await asyncio.to_thread(get)

    async def presigned_urls(self, keys: Sequence[str]) -> list[str]:
        """A presigned GET URL per key (valid PRESIGN_SECONDS).

        Signing is local computation, but botocore's is slow (bench/RESULTS.md, "Rendering
        result URLs vs the event loop"): a page of tasks with many files each, signed on the
        event loop, stalled every other request. So
        URLs are remembered for the first half of their life (a task's files never change),
        a key already being signed for another request is waited for rather than signed
        again, and the rest are signed together on one signing thread (one, so that signing
        competes with the event loop for the GIL from one thread at most).
        """
        now = time.monotonic()
        urls: dict[str, str] = {}
        waiting: dict[str, asyncio.Future[str]] = {}
        missing: list[str] = []
        for key in dict.fromkeys(keys):
            cached = self._urls.get(key)
            if cached is not None and cached[1] > now:
                urls[key] = cached[0]
            elif key in self._signing:
                waiting[key] = self._signing[key]
            else:
                missing.append(key)
        if missing:
            batch = {key: asyncio.get_running_loop().create_future() for key in missing}
            self._signing.update(batch)
            # A task of its own: a request that goes away does not take the batch with it.
            job = asyncio.ensure_future(
                self._sign_batch(batch, fresh_until=now + PRESIGN_SECONDS / 2)
            )
            self._batches.add(job)
            job.add_done_callback(self._batches.discard)
            waiting.update(batch)
        for key, future in waiting.items():
            urls[key] = await asyncio.shield(future)
        return [urls[key] for key in keys]

    async def _sign_batch(
        self, batch: dict[str, asyncio.Future[str]], *, fresh_until: float
    ) -> None:
        keys = list(batch)
        try:
            signed = await asyncio.get_running_loop().run_in_executor(
                self._signer, lambda: [self._sign(key) for key in keys]
            )
        except Exception as exc:
            for key, future in batch.items():
                self._signing.pop(key, None)
                future.set_exception(exc)
            return
        for key, url in zip(keys, signed, strict=True):
            self._urls[key] = (url, fresh_until)
            self._urls.move_to_end(key)
            self._signing.pop(key, None)
            batch[key].set_result(url)
        while len(self._urls) > PRESIGN_CACHE_SIZE:
            self._urls.popitem(last=False)

    def close(self) -> None:
        self._signer.shutdown(wait=False, cancel_futures=True)

    def _sign(self, key: str) -> str:
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
        )
