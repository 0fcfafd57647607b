"""An in-process JupyterHub (jupyterhub's ``MockHub`` with the real configurable-http-proxy) whose spawner is the
OpenStackSpawner on the local cloud (:mod:`.openstack.launcher`).

Shared by the tests' fixtures and the benchmarks (which must not import tests)::

    app = await start_hub(hub_config(cloud, volume_size=0))
    ...
    await stop_hub(app)
"""
import asyncio
import os
import tempfile

IMAGE, FLAVOR = "ubuntu-24.04-jupyter", "m1.small"  # of the local cloud's default catalogue


def hub_config(cloud, spawner_class="openstack", hub_id="test", **spawner_options):
    """A hub config: ``spawner_class`` (the OpenStackSpawner or a subclass) on ``cloud`` (a ``RunningCloud``),
    no reaper, an admin ``admin`` and every user allowed; ``spawner_options`` are OpenStackSpawner traits."""
    from traitlets.config import Config
    c = Config()
    c.JupyterHub.spawner_class = spawner_class
    c.OpenStackSpawner.cloud = "local"
    c.OpenStackSpawner.clouds_yaml = cloud.clouds_yaml
    c.OpenStackSpawner.image = IMAGE
    c.OpenStackSpawner.flavor = FLAVOR
    c.OpenStackSpawner.reaper_interval = 0
    c.OpenStackSpawner.hub_id = hub_id
    # in a private directory, not ./: another hub started from the same directory would stop this hub's proxy;
    # the cookie secret is a file, not a value: MockHub logs its config at debug level, and secrets stay out of logs
    private = tempfile.mkdtemp(prefix="jb-hub-")
    c.JupyterHub.cookie_secret_file = os.path.join(private, "cookie_secret")
    c.ConfigurableHTTPProxy.pid_file = os.path.join(private, "proxy.pid")
    c.Authenticator.admin_users = {"admin"}
    c.Authenticator.allow_all = True
    for key, value in spawner_options.items():
        setattr(c.OpenStackSpawner, key, value)
    return c


async def start_hub(config):
    """A started MockHub with ``config``."""
    from jupyterhub.tests.mocking import MockHub
    MockHub.clear_instance()
    app = MockHub.instance(config=config)
    await app.initialize()
    await app.start()
    return app


async def stop_mockhub(app):
    """Stop the hub now, as its process exiting would.

    Not ``app.stop()``: that schedules ``shutdown_cancel_tasks`` on the loop, which
    then cancels whatever the next test is setting up.  Kept-alive connections of
    notebook servers are closed too, so a hub started next on the same port is the
    one they talk to.
    """
    if app.http_server:
        app.http_server.stop()
        await asyncio.wait_for(app.http_server.close_all_connections(), 10)
    await app.shutdown_cancel_tasks()


async def stop_hub(app):
    """Stop a hub of :func:`start_hub` and the OpenStackSpawner's process-wide caches, reapers and connections."""
    from jupyterhub.tests.mocking import MockHub

    from ..spawner.cloud import CloudAdapter
    from ..spawner.reaper import Reaper
    from ..spawner.servercache import ServerCache
    ServerCache.stop_all()
    Reaper.stop_all()
    try:
        await stop_mockhub(app)
    finally:
        MockHub.clear_instance()
        CloudAdapter.forget_all()
