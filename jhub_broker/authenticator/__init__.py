"""EGI Check-in authentication: entitlements to groups and rights, groups to S3 credentials."""

__all__ = ["CheckinAuthenticator", "CHECKIN_ISSUERS"]


def __getattr__(name):
    # lazy: `jhub-broker-s3-credentials` (jhub_broker.authenticator.s3.cli) runs as an AWS credential_process
    # in users' servers, and importing oauthenticator would cost it seconds per call
    if name in __all__:
        from . import checkin
        return getattr(checkin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
