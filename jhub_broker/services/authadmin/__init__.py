"""Authentication administration in the broker service: live settings (read by the hub's authenticator at every
login), the authentication method (a generated config fragment applied by a checked, rolled-back restart), and
the audit log."""
AUDIT_TARGET = "@auth"
