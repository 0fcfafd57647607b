"""BrokerService settings of the login-method switch (mixed into :class:`jhub_broker.services.app.BrokerService`,
so they are set as ``BrokerService.<name>``, e.g. ``jhub_broker.configure(c, service_args=[...])``)."""
import os

from traitlets import Bool, HasTraits, Unicode, default


class AuthAdminTraits(HasTraits):
    allow_insecure_login_methods = Bool(
        False, config=True,
        help="Offer (and accept) login methods that check no secret of the user's own on the authentication "
             "method page: Dummy, where any password (or one password shared by everyone) logs in as any allowed "
             "name, admins included. For tests and demos only (`jhub-broker demo` sets it). Off: the page does not "
             "list them and the API refuses them with 400.")
    hub_login_url = Unicode(
        config=True,
        help="The hub's login page as the restart helper fetches it after a method change, to check that the "
             "bootstrap admin could log in with the new method (the form is served, or the hub redirects to the "
             "configured OAuth provider with the configured client id); otherwise the change is rolled back. "
             "Default: hub_check_url with api/ replaced by login.")

    @default("hub_login_url")
    def _hub_login_url(self):
        base = getattr(self, "hub_check_url", "") or \
            os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")
        base = base.rstrip("/")
        return (base[:-len("/api")] if base.endswith("/api") else base) + "/login"

    restart_helper_cgroup = Unicode(
        "", config=True,
        help="A cgroup v2 directory outside the hub's own (e.g. /sys/fs/cgroup/jhub-broker-restart, created if "
             "missing) that the restart helper moves itself into before it runs restart_command. A restart of the "
             "hub that kills every process of the hub's cgroup (systemd's default KillMode=control-group, "
             "`systemctl restart jupyterhub`) then leaves the helper alive to check the new hub and roll back. "
             "The service's user must be allowed to write that cgroup's cgroup.procs (root, or a delegated "
             "subtree). If the move fails, nothing is restarted and the previous configuration is put back. "
             "Empty (default): when systemd is PID 1 the helper runs as a transient unit of its own "
             "(`systemd-run --unit=jhub-broker-restart-... --collect`, `--user` when the service is not root), "
             "outside the hub's unit; without systemd it only gets a session of its own (setsid), which survives "
             "a restart that stops the hub's processes one by one but not a kill of the hub's whole cgroup.")
