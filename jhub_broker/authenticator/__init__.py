"""EGI Check-in authentication: entitlements to groups and rights, groups to S3 credentials."""
from .checkin import CHECKIN_ISSUERS, CheckinAuthenticator

__all__ = ["CheckinAuthenticator", "CHECKIN_ISSUERS"]
