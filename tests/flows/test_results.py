"""Prefect result storage in S3: one block naming the bucket and prefix (and no secret), made the
server's default so every worker reads and writes the same cached results; clearing it goes back
to each machine's own."""

from __future__ import annotations

import uuid

import pytest

from flows.results import clear_default_result_storage, use_s3_result_storage


@pytest.mark.parametrize("uri", ["/local/folder", "file:///tmp/x", "s3://", "s3:///prefix"])
def test_only_an_s3_uri_with_a_bucket_is_taken(uri: str) -> None:
    with pytest.raises(ValueError, match=r"s3://|bucket"):
        use_s3_result_storage(uri)


@pytest.mark.server
def test_the_block_becomes_the_servers_default_and_is_cleared(prefect_api) -> None:
    from prefect.client.orchestration import get_client
    from prefect_aws import S3Bucket

    name = f"results-{uuid.uuid4().hex[:8]}"
    slug = use_s3_result_storage(
        "s3://bucket/some/prefix/", block_name=name, endpoint_url="http://127.0.0.1:9"
    )
    assert slug == f"s3-bucket/{name}"
    block = S3Bucket.load(name)
    assert (block.bucket_name, block.bucket_folder) == ("bucket", "some/prefix"), block
    params = block.credentials.aws_client_parameters
    assert params.endpoint_url == "http://127.0.0.1:9", params
    assert block.credentials.aws_secret_access_key is None, "no secret is stored in the block"
    with get_client(sync_client=True) as client:
        default = client.read_server_default_result_storage().default_result_storage_block_id
        assert default == block._block_document_id, "the server's default result storage"
        clear_default_result_storage()
        assert client.read_server_default_result_storage().default_result_storage_block_id is None
