"""``jhub-broker``: the local cloud, the demo, and the broker service."""
import argparse
import asyncio
import logging
import os
import signal
import sys


def _cmd_cloud(args):
    from .emulators.openstack import start_cloud

    async def run():
        cloud, server = start_cloud(args.state_dir, args.host, args.port, args.config)
        print(f"local OpenStack cloud at {cloud.base_url}", flush=True)
        print(f"clouds.yaml: {os.path.join(args.state_dir, 'clouds.yaml')}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.stop()
        if cloud.vm_runner is not None:
            await cloud.vm_runner.shutdown()

    asyncio.run(run())


def _cmd_demo(args):
    from .demo import run_demo
    run_demo(args)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="jhub-broker", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("cloud", help="run the local OpenStack cloud (Keystone, Nova, Neutron, Glance, Cinder)")
    p.add_argument("--state-dir", required=True, help="where clouds.yaml, VM roots and volumes are kept")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    p.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    p.add_argument("--config", default=None, help="cloud config YAML (flavors, images, quotas, faults)")
    p.set_defaults(func=_cmd_cloud)

    p = sub.add_parser("demo", help="run the local demo: cloud, hub and services on loopback")
    p.add_argument("--state-dir", default=os.path.expanduser("~/.jhub-broker-demo"))
    p.add_argument("--port", type=int, default=8000, help="the hub's public port")
    p.add_argument("--cloud-only", action="store_true", help="start only the local cloud")
    p.add_argument("--no-login", action="store_true",
                   help="no Check-in stand-in: JupyterHub's DummyAuthenticator (any name, no password)")
    p.set_defaults(func=_cmd_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    host = getattr(args, "host", "127.0.0.1")
    if host and not (host.startswith("127.") or host in ("::1", "localhost")):
        parser.error(f"--host {host}: the local cloud listens on loopback only (127.0.0.0/8 or ::1)")
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
