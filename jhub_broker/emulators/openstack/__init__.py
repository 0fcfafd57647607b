"""A local OpenStack cloud for tests and the demo.

One tornado HTTP server answers Keystone v3, Nova v2.1, Neutron v2.0, Glance v2
and Cinder v3 on the URLs, microversions, JSON shapes and error bodies the real
services use, so the real openstacksdk and `openstack` CLI drive it.  Servers
that become ACTIVE really run their user_data in a sandbox (see ``vm/``).

Product code never imports this package.
"""
from .cloud import Cloud, CloudConfig  # noqa: F401
from .server import start_cloud, write_clouds_yaml  # noqa: F401
