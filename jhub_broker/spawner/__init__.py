"""OpenStackSpawner: one VM per user on an OpenStack cloud."""
from .openstack import OpenStackSpawner  # noqa: F401
