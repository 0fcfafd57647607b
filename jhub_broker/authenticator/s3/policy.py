"""The IAM-style policy a grant set produces: exactly the granted buckets and levels."""
import json

READ = ["s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject"]
WRITE = READ + ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts", "s3:ListBucketMultipartUploads"]
ACTIONS = {"read": READ, "write": WRITE, "admin": ["s3:*"]}


def policy_for(grants):
    statements = [{
        "Sid": f"{g.level}{i}",
        "Effect": "Allow",
        "Action": list(ACTIONS[g.level]),
        "Resource": [f"arn:aws:s3:::{g.bucket}", f"arn:aws:s3:::{g.bucket}/*"],
    } for i, g in enumerate(grants)]
    return {"Version": "2012-10-17", "Statement": statements}


def granted_set(policy):
    """{(bucket, level)} a policy grants (for checks)."""
    inv = {tuple(v): k for k, v in ACTIONS.items()}
    out = set()
    for st in policy.get("Statement", []):
        buckets = {r.split(":::", 1)[1].split("/", 1)[0] for r in st["Resource"]}
        for b in buckets:
            out.add((b, inv[tuple(st["Action"])]))
    return out


def compact(policy):
    return json.dumps(policy, separators=(",", ":"), sort_keys=True)
