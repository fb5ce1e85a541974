"""A throwaway S3 endpoint for tests: a moto server process over HTTP (never in-process mocks).

One server per session on a free 127.0.0.1 port; every test gets its own bucket. moto accepts any
credentials unless started with INITIAL_NO_AUTH_ACTION_COUNT=n: after n unauthenticated actions
every request must be signed by an access key it issued (moto.core.authorization), which is how
`authenticating_server` makes wrong credentials fail for real.
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import boto3

from tests.support.http_process import HttpProcess
from tests.support.services import free_port

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "lifeos-test", "AWS_SECRET_ACCESS_KEY": "lifeos-test-secret"}


class MotoServer(HttpProcess):
    """`python -m moto.server` as a child process; `url` is its endpoint."""

    name = "moto"

    def __init__(self, start_timeout: float = 30, env: dict[str, str] | None = None) -> None:
        self.credentials = dict(CREDENTIALS)
        port = free_port()
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        super().__init__(argv, port, "/moto-api/", start_timeout, env)

    def client(self, service: str = "s3") -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"],
        )


@dataclass
class Bucket:
    """One test's bucket on the moto server, and the client to look inside it."""

    name: str
    prefix: str
    client: Any
    endpoint: str

    def keys(self) -> list[str]:
        reply = self.client.list_objects_v2(Bucket=self.name)
        return sorted(obj["Key"] for obj in reply.get("Contents", []))

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.name, Key=key)["Body"].read())

    def uploads(self) -> list[dict[str, Any]]:
        return list(self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", []))


def new_bucket(server: MotoServer, object_lock: bool = False) -> Bucket:
    client = server.client()
    name = f"lifeos-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
    return Bucket(name, "lifeos", client, server.url)


_ALLOW_S3 = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


def authenticating_server() -> MotoServer:
    """A moto server that checks signatures: its first three (unsigned) actions create an IAM
    user allowed s3:* and that user's access key, which `credentials` and `client()` then use;
    any request after them signed with another key or secret is refused (403)."""
    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        iam = server.client("iam")
        iam.create_user(UserName="lifeos-backup")
        iam.put_user_policy(
            UserName="lifeos-backup", PolicyName="s3", PolicyDocument=json.dumps(_ALLOW_S3)
        )
        key = iam.create_access_key(UserName="lifeos-backup")["AccessKey"]
    except BaseException:
        server.stop()
        raise
    server.credentials = {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    return server


def closed_port_url() -> str:
    """An endpoint where nothing listens: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"
