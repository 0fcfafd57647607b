"""A user's server for tests: record the environment the hub gave it in ``<hub dir>/server-env-<user>.json``,
then run jupyterhub-singleuser with the given arguments (the hub's cwd is its directory, see hubctl.py)."""
import json
import os
import shutil
import sys

with open(os.path.join(os.environ.get("JB_HUB_DIR", os.getcwd()), f"server-env-{os.environ['JUPYTERHUB_USER']}.json"),
          "w") as f:
    json.dump(dict(os.environ), f)
single = shutil.which("jupyterhub-singleuser") or os.path.join(os.path.dirname(sys.executable),
                                                               "jupyterhub-singleuser")
os.execv(single, [single] + sys.argv[1:])
