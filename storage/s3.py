"""Result storage on AWS S3 or any S3-compatible server, through boto3 (run in threads: it
blocks). Without an endpoint URL, boto3 finds AWS's endpoint, credentials and region itself
(its default chain: environment, shared config, instance or task role)."""

from __future__ import annotations

import asyncio
from typing import IO, TYPE_CHECKING

import boto3
import botocore.config
import botocore.exceptions

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


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

    async def read(self, key: str) -> bytes:
        def get() -> bytes:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

        return await asyncio.to_thread(get)

    def presigned_url(self, key: str, *, expires_in: int = 3600) -> str:
        """Signing is local computation, no network: cheap enough to do per response."""
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
        )
