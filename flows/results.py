"""Prefect result storage in S3, so every worker shares cached task results.

Prefect keeps a task's result (and so its cache entry) in the result storage; by default that is
`~/.prefect/storage` on whichever machine ran the task, so a worker elsewhere misses the cache
and runs the task again. `use_s3_result_storage` saves an `s3-bucket` block and makes it the
server's default result storage: every flow run on that server, on any worker, then reads and
writes results under that prefix. The block holds no secrets: each worker resolves credentials
through the standard AWS chain (environment, profile, instance or pod role).
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters

from skin.data.location import DataLocation


def use_s3_result_storage(
    uri: str,
    *,
    block_name: str = "skin-results",
    endpoint_url: str | None = None,
    set_default: bool = True,
) -> str:
    """Save an S3 result-storage block for `uri` (s3://bucket/prefix) and, with `set_default`,
    make it the server's default result storage; returns the block slug."""
    where = DataLocation.parse(uri)  # a LocationError (ValueError) names a URI without a bucket
    if not where.is_s3:
        raise ValueError(f"result storage must be an s3:// URI, not {uri!r}")
    bucket, folder = where.bucket, where.prefix
    credentials = AwsCredentials(
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint_url)
    )
    block = S3Bucket(bucket_name=bucket, bucket_folder=folder.strip("/"), credentials=credentials)
    block_id = block.save(block_name, overwrite=True)
    if set_default:
        with get_client(sync_client=True) as client:
            client.update_server_default_result_storage(block_id)
    return f"s3-bucket/{block_name}"


def clear_default_result_storage() -> None:
    """Back to each machine's local result storage."""
    with get_client(sync_client=True) as client:
        client.clear_server_default_result_storage()
