"""Result storage on any S3-compatible server, through boto3 (run in threads: it blocks)."""

from __future__ import annotations

import asyncio
from typing import IO, TYPE_CHECKING

import boto3
import botocore.config
import botocore.exceptions

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


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
        region: str,
    ) -> None:
        self.bucket = bucket
        self._client: S3Client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )

    async def ensure_bucket(self) -> None:
        def create() -> None:
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except botocore.exceptions.ClientError:
                self._client.create_bucket(Bucket=self.bucket)

        await asyncio.to_thread(create)

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
