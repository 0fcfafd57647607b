"""The cloud's state: configuration, identities, tokens and resources.

All mutation happens on the tornado event loop, so no locking is needed.
"""
import copy
import ipaddress
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field

import yaml

from .vm import dockerhost

DEFAULT_CONFIG = {
    "region": "RegionOne",
    "domain": {"id": "default", "name": "Default"},
    "projects": [{"name": "research", "id": None}],
    "users": [
        {"name": "researcher", "password": "secret", "project": "research", "roles": ["member"]},
        {"name": "admin", "password": "admin-secret", "project": "research", "roles": ["admin", "member"]},
    ],
    "application_credentials": [],
    # OIDC federation (EGI Check-in): an access token is accepted when the
    # introspection hook (set by tests/demo) or the static map knows it.
    "federation": {"identity_providers": ["egi.eu"], "protocol": "openid", "tokens": {}},
    "flavors": [
        {"name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1},
        {"name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
        {"name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40},
        {"name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80},
    ],
    "images": [
        {"name": "ubuntu-24.04-jupyter", "min_disk": 10, "min_ram": 1024,
         "properties": {"os_distro": "ubuntu", "os_version": "24.04", "jhub_broker_prebaked": "true"}},
        {"name": "ubuntu-24.04", "min_disk": 5, "min_ram": 512,
         "properties": {"os_distro": "ubuntu", "os_version": "24.04"}},
        {"name": "big-gpu-image", "min_disk": 60, "min_ram": 8192,
         "properties": {"os_distro": "ubuntu", "os_version": "24.04", "jhub_broker_prebaked": "true"}},
    ],
    "quotas": {
        "instances": 10, "cores": 20, "ram": 51200, "key_pairs": 100,
        "server_groups": 10, "server_group_members": 10, "metadata_items": 128,
        "floatingip": 10, "network": 10, "subnet": 10, "port": 100, "router": 10,
        "security_group": 20, "security_group_rule": 200,
        "volumes": 10, "gigabytes": 1000, "snapshots": 10,
    },
    # Fixed IPs of the default network and floating IPs are loopback
    # addresses, so "VMs" are reachable from the host and nothing else.
    "default_network": {"name": "private", "cidr": "127.42.0.0/24"},
    "external_network": {"name": "public", "cidr": "127.43.0.0/24"},
    "boot_delay": 1.0,
    "delete_delay": 0.2,
    "token_ttl": 3600,
    "admin_secret": None,
    "faults": [],
    "boot_failures": [],
    # docker_host_image: registered (name) when Debian's docker.io is installed; null registers none
    "vm": {"enabled": True, "prebaked_python": None, "cloud_init": "auto", "docker_host_image": "debian-docker-host"},
}


def _merge(base, override):
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def new_id():
    return str(uuid.uuid4())


def hex_id():
    return uuid.uuid4().hex


def now_iso(ts=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts if ts is not None else time.time()))


def now_iso_us(ts=None):
    ts = ts if ts is not None else time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%06dZ" % int((ts % 1) * 1e6)


@dataclass
class CloudConfig:
    """Settings of one emulated cloud, from a YAML file merged over defaults."""

    data: dict = field(default_factory=lambda: copy.deepcopy(DEFAULT_CONFIG))

    @classmethod
    def load(cls, path=None, overrides=None):
        data = copy.deepcopy(DEFAULT_CONFIG)
        if path and os.path.exists(path):
            with open(path) as f:
                data = _merge(data, yaml.safe_load(f) or {})
        data = _merge(data, overrides or {})
        return cls(data)

    def __getitem__(self, key):
        return self.data[key]

    def get(self, key, default=None):
        return self.data.get(key, default)


class Cloud:
    """Everything the emulated cloud knows.  Handlers read and write here."""

    def __init__(self, config=None, state_dir=None, base_url="http://127.0.0.1:0"):
        self.config = config or CloudConfig()
        self.state_dir = state_dir
        self.base_url = base_url.rstrip("/")
        self.admin_secret = self.config.get("admin_secret") or secrets.token_urlsafe(24)
        self.tokens = {}
        self.projects = {}
        self.users = {}
        self.app_creds = {}
        self.ec2_credentials = {}
        self.flavors = {}
        self.images = {}
        self.keypairs = {}
        self.servers = {}
        self.networks = {}
        self.subnets = {}
        self.ports = {}
        self.routers = {}
        self.security_groups = {}
        self.security_group_rules = {}
        self.floating_ips = {}
        self.volumes = {}
        self.request_log = []  # (method, path) of every API request; benchmarks count them
        self.vm_runner = None  # set by server.start_cloud when VMs execute
        self.federation_introspect = None  # optional callable(token) -> claims dict | None
        self.faults = None  # set by server.start_cloud
        self._seed()

    # -- seeding ---------------------------------------------------------
    def _seed(self):
        cfg = self.config
        self.domain = cfg["domain"]
        for p in cfg["projects"]:
            pid = p.get("id") or hex_id()
            self.projects[pid] = {"id": pid, "name": p["name"], "domain_id": self.domain["id"],
                                  "description": p.get("description", ""), "enabled": True,
                                  "is_domain": False, "parent_id": self.domain["id"], "tags": [],
                                  "options": {}, "links": {}}
        for u in cfg["users"]:
            uid = u.get("id") or hex_id()
            project = self.project_by_name(u.get("project")) or next(iter(self.projects.values()))
            self.users[uid] = {"id": uid, "name": u["name"], "password": u.get("password"),
                               "domain_id": self.domain["id"], "enabled": True,
                               "default_project_id": project["id"], "roles": list(u.get("roles", ["member"])),
                               "federated": False}
        for ac in cfg.get("application_credentials") or []:
            self.add_application_credential(ac["user"], ac.get("name", "app-cred"),
                                            ac.get("id"), ac.get("secret"))
        for f in cfg["flavors"]:
            fid = str(f.get("id") or new_id())
            self.flavors[fid] = {
                "id": fid, "name": f["name"], "vcpus": f["vcpus"], "ram": f["ram"], "disk": f["disk"],
                "OS-FLV-EXT-DATA:ephemeral": f.get("ephemeral", 0), "swap": f.get("swap", ""),
                "rxtx_factor": 1.0, "os-flavor-access:is_public": True, "OS-FLV-DISABLED:disabled": False,
                "description": f.get("description"), "extra_specs": dict(f.get("extra_specs", {})),
            }
        for im in cfg["images"]:
            self.add_image(im)
        docker_image = (cfg.get("vm") or {}).get("docker_host_image")
        if docker_image and dockerhost.docker_installed() and not any(
                i["name"] == docker_image for i in self.images.values()):
            self.add_image({"name": docker_image, "min_disk": 10, "min_ram": 1024,
                            "properties": {"os_distro": "debian", "os_version": "12",
                                           dockerhost.PROPERTY: "true", "jhub_broker_prebaked": "true"}})
        self.default_project = next(iter(self.projects.values()))
        pid = self.default_project["id"]
        ext = cfg["external_network"]
        net = self.add_network(pid, ext["name"], external=True, shared=True)
        self.add_subnet(pid, net["id"], ext["name"] + "-subnet", ext["cidr"])
        self.external_network = net
        dn = cfg["default_network"]
        if dn:
            net = self.add_network(pid, dn["name"])
            sub = self.add_subnet(pid, net["id"], dn["name"] + "-subnet", dn["cidr"])
            router = self.add_router(pid, "router1", external_network_id=self.external_network["id"])
            router["_interfaces"].append(sub["id"])
        self.default_security_group(pid)

    # -- identity ----------------------------------------------------------
    def project_by_name(self, name):
        for p in self.projects.values():
            if p["name"] == name or p["id"] == name:
                return p
        return None

    def user_by_name(self, name):
        for u in self.users.values():
            if u["name"] == name or u["id"] == name:
                return u
        return None

    def add_application_credential(self, user_name, name, cred_id=None, secret=None, roles=None):
        user = self.user_by_name(user_name)
        if user is None:
            raise KeyError(f"application credential for unknown user {user_name!r}")
        cred_id = cred_id or hex_id()
        secret = secret or secrets.token_urlsafe(32)
        self.app_creds[cred_id] = {"id": cred_id, "name": name, "secret": secret, "user_id": user["id"],
                                   "project_id": user["default_project_id"],
                                   "roles": roles or list(user["roles"])}
        return self.app_creds[cred_id]

    def federated_user(self, idp, subject, name=None):
        """The shadow user Keystone makes for a federated identity."""
        for u in self.users.values():
            if u.get("federated") and u.get("idp") == idp and u.get("subject") == subject:
                return u
        uid = hex_id()
        self.users[uid] = {"id": uid, "name": name or subject, "password": None,
                           "domain_id": self.domain["id"], "enabled": True,
                           "default_project_id": self.default_project["id"], "roles": ["member"],
                           "federated": True, "idp": idp, "subject": subject}
        return self.users[uid]

    def issue_token(self, user, project, methods, app_cred=None, roles=None):
        token = "gAAAA" + secrets.token_urlsafe(48)
        issued = time.time()
        ttl = float(self.config["token_ttl"])
        self.tokens[token] = {"user": user, "project": project, "methods": methods,
                              "issued": issued, "expires": issued + ttl, "app_cred": app_cred,
                              "roles": list(roles if roles is not None else user["roles"])}
        return token, self.tokens[token]

    def check_token(self, token):
        info = self.tokens.get(token or "")
        if not info or info["expires"] < time.time():
            return None
        return info

    # -- resources ---------------------------------------------------------
    def add_image(self, im):
        iid = im.get("id") or new_id()
        t = now_iso()
        image = {"id": iid, "name": im["name"], "status": "active", "visibility": im.get("visibility", "public"),
                 "protected": False, "min_disk": int(im.get("min_disk", 0)), "min_ram": int(im.get("min_ram", 0)),
                 "disk_format": im.get("disk_format", "qcow2"), "container_format": "bare",
                 "size": int(im.get("size", 2361393152)), "virtual_size": None, "checksum": "0" * 32,
                 "os_hidden": False, "owner": None, "created_at": t, "updated_at": t, "tags": list(im.get("tags", [])),
                 "file": f"/v2/images/{iid}/file", "self": f"/v2/images/{iid}", "schema": "/v2/schemas/image"}
        for k, v in (im.get("properties") or {}).items():
            image[k] = str(v)
        self.images[iid] = image
        return image

    def add_network(self, project_id, name, external=False, shared=False, **extra):
        nid = new_id()
        t = now_iso()
        net = {"id": nid, "name": name, "tenant_id": project_id, "project_id": project_id,
               "admin_state_up": True, "status": "ACTIVE", "subnets": [], "shared": shared,
               "router:external": external, "mtu": 1500, "availability_zone_hints": [],
               "availability_zones": ["nova"], "ipv4_address_scope": None, "ipv6_address_scope": None,
               "port_security_enabled": True, "description": "", "tags": [], "created_at": t,
               "updated_at": t, "revision_number": 1, "is_default": external,
               "provider:network_type": "flat" if external else "vxlan"}
        net.update(extra)
        self.networks[nid] = net
        return net

    def add_subnet(self, project_id, network_id, name, cidr, gateway_ip="auto", **extra):
        net_cidr = ipaddress.ip_network(cidr, strict=False)
        hosts = list(net_cidr.hosts())[:3] if net_cidr.num_addresses > 2 else [net_cidr.network_address]
        gw = str(hosts[0]) if gateway_ip == "auto" else gateway_ip
        sid = new_id()
        t = now_iso()
        first = str(hosts[1]) if len(hosts) > 1 else gw
        sub = {"id": sid, "name": name, "network_id": network_id, "tenant_id": project_id,
               "project_id": project_id, "cidr": str(net_cidr), "ip_version": net_cidr.version,
               "gateway_ip": gw, "enable_dhcp": True, "dns_nameservers": [], "host_routes": [],
               "allocation_pools": [{"start": first, "end": str(net_cidr.broadcast_address - 1)}],
               "ipv6_address_mode": None, "ipv6_ra_mode": None, "subnetpool_id": None,
               "description": "", "tags": [], "created_at": t, "updated_at": t, "revision_number": 0,
               "service_types": [], "segment_id": None}
        sub.update(extra)
        self.subnets[sid] = sub
        self.networks[network_id]["subnets"].append(sid)
        return sub

    def add_router(self, project_id, name, external_network_id=None):
        rid = new_id()
        t = now_iso()
        gw = None
        if external_network_id:
            gw = {"network_id": external_network_id, "enable_snat": True, "external_fixed_ips": []}
        router = {"id": rid, "name": name, "tenant_id": project_id, "project_id": project_id,
                  "admin_state_up": True, "status": "ACTIVE", "external_gateway_info": gw,
                  "routes": [], "distributed": False, "ha": False, "availability_zone_hints": [],
                  "availability_zones": ["nova"], "description": "", "tags": [], "flavor_id": None,
                  "created_at": t, "updated_at": t, "revision_number": 1, "_interfaces": []}
        self.routers[rid] = router
        return router

    def default_security_group(self, project_id):
        for sg in self.security_groups.values():
            if sg["project_id"] == project_id and sg["name"] == "default":
                return sg
        sg = self.add_security_group(project_id, "default", "Default security group")
        for ethertype in ("IPv4", "IPv6"):
            self.add_security_group_rule(project_id, sg["id"], "ingress", ethertype, remote_group_id=sg["id"])
        return sg

    def add_security_group(self, project_id, name, description=""):
        sid = new_id()
        t = now_iso()
        sg = {"id": sid, "name": name, "description": description, "tenant_id": project_id,
              "project_id": project_id, "security_group_rules": [], "tags": [], "stateful": True,
              "shared": False, "created_at": t, "updated_at": t, "revision_number": 1}
        self.security_groups[sid] = sg
        for ethertype in ("IPv4", "IPv6"):
            self.add_security_group_rule(project_id, sid, "egress", ethertype)
        return sg

    def add_security_group_rule(self, project_id, sg_id, direction, ethertype="IPv4", protocol=None,
                                port_range_min=None, port_range_max=None, remote_ip_prefix=None,
                                remote_group_id=None, description=""):
        rid = new_id()
        t = now_iso()
        rule = {"id": rid, "security_group_id": sg_id, "direction": direction, "ethertype": ethertype,
                "protocol": protocol, "port_range_min": port_range_min, "port_range_max": port_range_max,
                "remote_ip_prefix": remote_ip_prefix, "remote_group_id": remote_group_id,
                "remote_address_group_id": None, "normalized_cidr": remote_ip_prefix,
                "tenant_id": project_id, "project_id": project_id, "description": description,
                "tags": [], "created_at": t, "updated_at": t, "revision_number": 0, "belongs_to_default_sg": False}
        self.security_group_rules[rid] = rule
        self.security_groups[sg_id]["security_group_rules"].append(rule)
        return rule

    def allocate_ip(self, subnet_id):
        """The lowest free address of a subnet's allocation pool."""
        sub = self.subnets[subnet_id]
        used = {fip["ip_address"] for p in self.ports.values() for fip in p["fixed_ips"]}
        used |= {f["floating_ip_address"] for f in self.floating_ips.values()}
        used.add(sub["gateway_ip"])
        for pool in sub["allocation_pools"]:
            start = ipaddress.ip_address(pool["start"])
            end = ipaddress.ip_address(pool["end"])
            ip = start
            while ip <= end:
                if str(ip) not in used:
                    return str(ip)
                ip += 1
        return None

    # -- quota usage -------------------------------------------------------
    def usage(self, project_id):
        servers = [s for s in self.servers.values() if s["tenant_id"] == project_id]
        # the server's embedded flavor (Nova 2.47+) counts, even if the flavor was deleted since
        flavors = [s["flavor"] if "vcpus" in s["flavor"] else self.flavors.get(s["flavor"].get("id")) or {}
                   for s in servers]
        return {
            "instances": len(servers),
            "cores": sum(f.get("vcpus", 0) for f in flavors),
            "ram": sum(f.get("ram", 0) for f in flavors),
            "key_pairs": len([k for k in self.keypairs.values() if k["_project_id"] == project_id]),
            "floatingip": len([f for f in self.floating_ips.values() if f["project_id"] == project_id]),
            "network": len([n for n in self.networks.values() if n["project_id"] == project_id and not n["router:external"]]),
            "subnet": len([s for s in self.subnets.values() if s["project_id"] == project_id]),
            "port": len([p for p in self.ports.values() if p["project_id"] == project_id]),
            "router": len([r for r in self.routers.values() if r["project_id"] == project_id]),
            "security_group": len([g for g in self.security_groups.values() if g["project_id"] == project_id]),
            "security_group_rule": len([r for r in self.security_group_rules.values() if r["project_id"] == project_id]),
            "volumes": len([v for v in self.volumes.values() if v["_project_id"] == project_id]),
            "gigabytes": sum(v["size"] for v in self.volumes.values() if v["_project_id"] == project_id),
            "snapshots": 0,
        }

    def quota(self, resource):
        return int(self.config["quotas"].get(resource, -1))

    def endpoint(self, service):
        return f"{self.base_url}/{service}"
