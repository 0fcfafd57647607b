"""A real local spawner that runs single-user servers as the unprivileged ``nobody`` (jupyter-server refuses root)."""
import os
import pwd

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Unicode


class NobodySpawner(LocalProcessSpawner):
    run_as = Unicode("nobody", config=True, help="System user the servers run as.")
    homes = Unicode(config=True, help="Parent dir of per-user home dirs (writable by run_as).")

    def _home(self):
        home = os.path.join(self.homes, self.user.name)
        pw = pwd.getpwnam(self.run_as)
        os.makedirs(home, exist_ok=True)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        return home

    def make_preexec_fn(self, name):
        pw = pwd.getpwnam(self.run_as)
        home = self._home()

        def preexec():
            os.setgid(pw.pw_gid)
            os.setgroups([])
            os.setuid(pw.pw_uid)
            os.chdir(home)
        return preexec

    def user_env(self, env):
        env["USER"] = self.run_as
        env["HOME"] = self._home()
        env["SHELL"] = "/bin/sh"
        return env
