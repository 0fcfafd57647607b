"""S3 credentials from Check-in groups: grants, policies, backends (static, sts, keystone_ec2), delivery."""
from .broker import API_PATH, S3Broker
from .grants import Grant, resolve_grants
from .policy import policy_for

__all__ = ["API_PATH", "Grant", "S3Broker", "policy_for", "resolve_grants"]
