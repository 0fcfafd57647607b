"""A real S3 (+IAM, STS) server on loopback: ``moto_server`` with authentication enforced.

``MotoS3(...).start()`` runs ``python -m moto.server``; ``setup(buckets, users)`` creates buckets
and IAM users with inline policies (returns their keys); ``enforce_auth()`` then switches on
request signing + IAM policy checks (``POST /moto-api/reset-auth``).
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from .process import stop_process

ROOT_KEYS = {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": "root-secret-for-moto-only"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    def __init__(self, state_dir, port=0, region="us-east-1"):
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        self.region = region
        self.proc = None

    def start(self, timeout=30):
        os.makedirs(self.state_dir, exist_ok=True)
        log = open(os.path.join(self.state_dir, "moto.log"), "ab")
        env = dict(os.environ, AWS_DEFAULT_REGION=self.region, **{k.upper(): v for k, v in ROOT_KEYS.items()})
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)

    def client(self, service, **keys):
        import boto3
        return boto3.client(service, endpoint_url=self.url, region_name=self.region, **(keys or ROOT_KEYS))

    def setup(self, buckets, users, roles=()):
        """buckets: names; users: {name: policy dict}; roles: {name: policy dict} (trust: anyone)."""
        s3, iam = self.client("s3"), self.client("iam")
        for b in buckets:
            s3.create_bucket(Bucket=b)
            s3.put_object(Bucket=b, Key="README.txt", Body=f"data in {b}".encode())
        keys = {}
        for name, policy in users.items():
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName="grants", PolicyDocument=json.dumps(policy))
            k = iam.create_access_key(UserName=name)["AccessKey"]
            keys[name] = {"access_key_id": k["AccessKeyId"], "secret_access_key": k["SecretAccessKey"]}
        for name, policy in dict(roles).items():
            trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Federated": "*"},
                                                             "Action": "sts:AssumeRoleWithWebIdentity"}]}
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
            iam.put_role_policy(RoleName=name, PolicyName="grants", PolicyDocument=json.dumps(policy))
        return keys

    def enforce_auth(self):
        # the root keys keep full access (a user with admin policy), then auth is switched on
        iam = self.client("iam")
        iam.create_user(UserName="root-admin")
        iam.put_user_policy(UserName="root-admin", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        k = iam.create_access_key(UserName="root-admin")["AccessKey"]
        self.admin_keys = {"aws_access_key_id": k["AccessKeyId"], "aws_secret_access_key": k["SecretAccessKey"]}
        req = urllib.request.Request(self.url + "/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self):
        stop_process(self.proc)
