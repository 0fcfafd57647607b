"""Build the service's published environments on this machine (a user's VM) with the same builder.

    python -m jhub_broker.services.environments.sync \\
        --service-url https://hub.example.org/services/broker/ --token-file /etc/jhub-broker/token \\
        --root /opt/jhub-broker/environments --jupyter-data-dir /usr/local/share/jupyter

Fetches every environment's lockfile (exact pins) and, when it changed, builds it from the lockfile
into ``<root>/<name>/builds/<n>``, smoke-tests the kernel, switches ``<root>/<name>/current`` and writes the
kernelspec. Environments deleted on the service are removed here. Exit status 0 when all succeeded.
The token needs the ``custom:broker-environments:view`` scope (and ``access:services!service=broker``).
"""
import argparse
import asyncio
import json
import os
import shutil
import sys
import urllib.request

from . import builder, kernels
from .validation import validate_env_name

MARKER = ".jhub-broker-sync"


def _get(url, token, accept="application/json"):
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}", "Accept": accept})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read().decode("utf-8"), dict(r.headers)


def _publish(env_dir, number):
    link = os.path.join(env_dir, "current")
    tmp = link + ".new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join("builds", str(number)), tmp)
    os.replace(tmp, link)


async def sync(service_url, token, root, kernels_dir, pythons, installer="auto", log=print, smoke=True,
               smoke_user=None):
    """Make ``root`` match the service. Returns {env name: "unchanged"|"built"|"removed"|"failed: ..."}."""
    base = service_url.rstrip("/") + "/api/"
    installer = builder.choose_installer(installer)
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)
    cache_dir = os.path.join(root, ".cache")
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    body, _ = _get(base + "environments", token)
    remote = [e for e in json.loads(body)["environments"] if e.get("current_build")]
    results = {}
    for e in remote:
        name = validate_env_name(e["name"])
        env_dir = os.path.join(root, name)
        try:
            lock, headers = _get(base + f"environments/{name}/lockfile", token, accept="text/plain")
            number = int(headers.get("X-Broker-Build") or e["current_build"])
            current_lock = os.path.join(env_dir, "current", "jhub-broker-lock.txt")
            if os.path.exists(current_lock) and open(current_lock).read() == lock:
                kernels.write_kernelspec(kernels_dir, name, e["display_name"],
                                         os.path.join(env_dir, "current", "bin", "python"))
                results[name] = "unchanged"
                continue
            os.makedirs(os.path.join(env_dir, "builds"), exist_ok=True)
            for d in (env_dir, os.path.join(env_dir, "builds")):
                os.chmod(d, 0o755)
            open(os.path.join(env_dir, MARKER), "w").close()
            dest = os.path.join(env_dir, "builds", str(number))
            if os.path.exists(dest):
                shutil.rmtree(dest)
            python = pythons.get(e["python"]) or next(iter(pythons.values()))
            log(f"== {name}: building build {number} from its lockfile with {python}")
            from packaging.requirements import Requirement
            await builder.build_env(dest, python, lambda line: log(f"[{name}] {line}"), lockfile=lock,
                                    installer=installer, cache_dir=cache_dir, smoke=smoke,
                                    smoke_packages=[Requirement(s).name for s in e.get("requirements", [])],
                                    smoke_user=smoke_user)
            _publish(env_dir, number)
            kernels.write_kernelspec(kernels_dir, name, e["display_name"],
                                     os.path.join(env_dir, "current", "bin", "python"))
            for old in os.listdir(os.path.join(env_dir, "builds")):
                if old != str(number):
                    shutil.rmtree(os.path.join(env_dir, "builds", old), ignore_errors=True)
            results[name] = "built"
        except Exception as err:  # keep going: one broken env must not block the others
            log(f"== {name}: failed: {err}")
            results[name] = f"failed: {err}"
    wanted = {e["name"] for e in remote}
    for entry in os.listdir(root):
        if entry not in wanted and os.path.exists(os.path.join(root, entry, MARKER)):
            kernels.remove_kernelspec(kernels_dir, entry)
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
            results[entry] = "removed"
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--service-url", required=True, help="the broker service's URL, e.g. https://hub/services/broker/")
    p.add_argument("--token", default=os.environ.get("JHUB_BROKER_TOKEN", ""),
                   help="hub API token (default: $JHUB_BROKER_TOKEN); prefer --token-file")
    p.add_argument("--token-file", help="file holding the hub API token")
    p.add_argument("--root", default="/opt/jhub-broker/environments", help="where environments are built")
    p.add_argument("--jupyter-data-dir", default="/usr/local/share/jupyter",
                   help="Jupyter data dir for the kernelspecs (on every server's JUPYTER_PATH)")
    p.add_argument("--python", action="append", default=[], metavar="VERSION=PATH",
                   help="base interpreter per Python version (default 3.x=/usr/bin/python3)")
    p.add_argument("--installer", choices=["auto", "uv", "pip"], default="auto")
    p.add_argument("--no-smoke-test", action="store_true", help="skip starting each kernel after building")
    p.add_argument("--smoke-test-user", default="nobody" if os.geteuid() == 0 else None,
                   help="unprivileged user the smoke test runs as when run as root (default: nobody)")
    args = p.parse_args(argv)
    token = args.token
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    if not token:
        p.error("a token is required (--token-file, --token or $JHUB_BROKER_TOKEN)")
    pythons = dict(s.split("=", 1) for s in args.python)
    if not pythons:
        pythons = {builder.python_version("/usr/bin/python3") or "3": "/usr/bin/python3"}
    results = asyncio.run(sync(args.service_url, token, os.path.abspath(args.root),
                               os.path.join(os.path.abspath(args.jupyter_data_dir), "kernels"), pythons,
                               installer=args.installer, log=lambda line: print(line, flush=True),
                               smoke=not args.no_smoke_test, smoke_user=args.smoke_test_user))
    print(json.dumps(results, indent=1))
    return 1 if any(v.startswith("failed") for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
