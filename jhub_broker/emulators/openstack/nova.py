"""Nova (compute API v2.1, microversions 2.1 - 2.96) under ``/compute``.

Server lifecycle: create -> BUILD (vm_state building, task_state spawning);
after ``config["boot_delay"]`` seconds the VM runner boots it -> ACTIVE, or a
``config["boot_failures"]`` rule / a runner error puts it in ERROR with a
fault.  Delete answers 204, sets task_state deleting, and the server is gone
``config["delete_delay"]`` seconds later (ports Nova made deleted, given ports
unbound, volumes detached, runner stopped).
"""
import asyncio
import base64
import binascii
import datetime
import hashlib
import itertools
import logging
import random
import re
import time
import uuid
from urllib.parse import urlencode

from . import nova_extensions
from .cloud import new_id, now_iso
from .web import APIError, BaseHandler

log = logging.getLogger("jhub_broker.cloud.nova")

PREFIX = "/compute"
_INSTANCE_NUMBERS = itertools.count(1)  # Nova's instance_name is "instance-" + its database id in hex
MIN_VERSION = (2, 1)
MAX_VERSION = (2, 96)
GiB = 1024 ** 3


def _vstr(v):
    return f"{v[0]}.{v[1]}"


def _ts(t):
    return now_iso(t)


def _parse_time(value):
    """ISO 8601 -> epoch seconds, or None."""
    v = value.strip().replace(" ", "+")
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    try:
        d = datetime.datetime.fromisoformat(v)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return d.timestamp()


def _ref_id(ref):
    """imageRef / flavorRef may be an id or a URL ending with it."""
    ref = str(ref or "").strip()
    return ref.rstrip("/").rsplit("/", 1)[-1] if "/" in ref else ref


def bad_input(field, value, reason):
    return APIError(400, f"Invalid input for field/attribute {field}. Value: {value}. {reason}")


# -- discovery ------------------------------------------------------------

def _v21_doc(cloud):
    return {"id": "v2.1", "status": "CURRENT", "version": _vstr(MAX_VERSION), "min_version": _vstr(MIN_VERSION),
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{cloud.base_url}{PREFIX}/v2.1/"}]}


class VersionsHandler(BaseHandler):
    service = "compute"
    requires_auth = False

    def get(self):
        c = self.cloud
        self.send({"versions": [
            {"id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "", "updated": "2011-01-21T11:33:21Z",
             "links": [{"rel": "self", "href": f"{c.base_url}{PREFIX}/v2/"}]},
            _v21_doc(c)]})


class V21Handler(BaseHandler):
    service = "compute"
    requires_auth = False

    def get(self):
        doc = _v21_doc(self.cloud)
        doc["links"].append({"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"})
        doc["media-types"] = [{"base": "application/json",
                               "type": "application/vnd.openstack.compute+json;version=2.1"}]
        self.send({"version": doc})


# -- base handler with microversions ---------------------------------------

class NovaHandler(BaseHandler):
    service = "compute"
    min_microversion = None  # routes that only exist from some microversion on

    def set_default_headers(self):
        super().set_default_headers()
        v = getattr(self, "_api_version", None)
        if v is not None:
            self.set_header("OpenStack-API-Version", f"compute {_vstr(v)}")
            self.set_header("X-OpenStack-Nova-API-Version", _vstr(v))
            self.set_header("Vary", "OpenStack-API-Version, X-OpenStack-Nova-API-Version")

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 405 and getattr(exc, "kind", None) is None:
            # Nova names this fault "badMethod"
            err = APIError(405, "The method specified is not allowed for this resource.", kind="badMethod")
            kwargs["exc_info"] = (APIError, err, None)
        super().write_error(status_code, **kwargs)

    async def prepare(self):
        self._api_version = None
        await super().prepare()
        self._api_version = self._negotiate()
        self.set_default_headers()
        if self.min_microversion and self._api_version < self.min_microversion:
            raise APIError(404, "The resource could not be found.")

    def _negotiate(self):
        raw = None
        header = self.request.headers.get("OpenStack-API-Version")
        if header:
            for part in header.split(","):
                bits = part.strip().split(None, 1)
                if len(bits) == 2 and bits[0].lower() == "compute":
                    raw = bits[1].strip()
        if raw is None:
            raw = self.request.headers.get("X-OpenStack-Nova-API-Version")
        if raw is None:
            return MIN_VERSION
        raw = raw.strip()
        if raw.lower() == "latest":
            return MAX_VERSION
        m = re.fullmatch(r"([1-9]\d*)\.([1-9]\d*|0)", raw)
        if not m:
            raise APIError(400, f"API Version String {raw} is of invalid format. Must be of format "
                                "MajorNum.MinorNum.")
        v = (int(m.group(1)), int(m.group(2)))
        if v < MIN_VERSION or v > MAX_VERSION:
            raise APIError(406, f"Version {raw} is not supported by the API. Minimum is {_vstr(MIN_VERSION)} "
                                f"and maximum is {_vstr(MAX_VERSION)}.")
        return v

    def ver(self, major_minor):
        """True when the negotiated microversion is at least ``major_minor`` ("2.47")."""
        a, b = major_minor.split(".")
        return self._api_version >= (int(a), int(b))

    @property
    def url(self):
        return f"{self.cloud.base_url}{PREFIX}/v2.1"

    def links(self, kind, rid):
        return [{"rel": "self", "href": f"{self.url}/{kind}/{rid}"},
                {"rel": "bookmark", "href": f"{self.cloud.base_url}{PREFIX}/{kind}/{rid}"}]

    def nova_body(self, key):
        data = self.body()
        if key not in data or not isinstance(data[key], dict):
            raise bad_input(key, data, f"'{key}' is a required property")
        return data[key]

    # lookups -----------------------------------------------------------
    def server_or_404(self, server_id):
        s = self.cloud.servers.get(server_id)
        if s is None or (s["tenant_id"] != self.project_id and not self.is_admin):
            raise APIError(404, f"Instance {server_id} could not be found.")
        return s

    def check_state(self, s, action, allowed=("active", "stopped")):
        state = s["OS-EXT-STS:vm_state"]
        if state not in allowed or s["OS-EXT-STS:task_state"] == "deleting":
            raise APIError(409, f"Cannot '{action}' instance {s['id']} while it is in "
                                f"{'task_state deleting' if state in allowed else 'vm_state ' + state}")

    def int_arg(self, name, default=None, minimum=0):
        raw = self.get_argument(name, None)
        if raw is None:
            return default
        try:
            v = int(raw)
            if v < minimum:
                raise ValueError
        except ValueError:
            raise APIError(400, f"Invalid input for query parameters {name}. Value: {raw}. "
                                f"'{raw}' does not match '^[0-9]*$'")
        return v


def paginate(handler, items, key, kind, max_limit=1000):
    """limit/marker paging; returns (page, links-or-None)."""
    marker = handler.get_argument("marker", None)
    limit = handler.int_arg("limit")
    if marker is not None:
        idx = next((i for i, it in enumerate(items) if str(it[key]) == marker), None)
        if idx is None:
            raise APIError(400, f"marker [{marker}] not found")
        items = items[idx + 1:]
    eff = min(limit, max_limit) if limit is not None else max_limit
    page = items[:eff]
    links = None
    if page and len(page) == eff and (limit is not None or len(items) > eff):
        args = [(k, v) for k, vs in handler.request.query_arguments.items() if k not in ("marker", "limit")
                for v in (x.decode() for x in vs)]
        args += [("limit", eff), ("marker", page[-1][key])]
        path = handler.request.path.rstrip("/")
        links = [{"rel": "next", "href": f"{handler.cloud.base_url}{path}?{urlencode(args)}"}]
    return page, links


# -- flavors --------------------------------------------------------------

def flavor_view(h, f, detail=True):
    out = {"id": f["id"], "name": f["name"], "links": h.links("flavors", f["id"])}
    if h.ver("2.55"):
        out["description"] = f.get("description")
    if not detail:
        return out
    swap = f.get("swap") or 0
    out.update({"vcpus": f["vcpus"], "ram": f["ram"], "disk": f["disk"],
                "OS-FLV-EXT-DATA:ephemeral": f.get("OS-FLV-EXT-DATA:ephemeral", 0),
                "swap": int(swap) if (swap or h.ver("2.75")) else "",
                "rxtx_factor": f.get("rxtx_factor", 1.0),
                "os-flavor-access:is_public": f.get("os-flavor-access:is_public", True),
                "OS-FLV-DISABLED:disabled": f.get("OS-FLV-DISABLED:disabled", False)})
    if h.ver("2.61"):
        out["extra_specs"] = dict(f.get("extra_specs") or {})
    return out


class FlavorsHandler(NovaHandler):
    def get(self, detail=None):
        flavors = list(self.cloud.flavors.values())
        min_disk = self.int_arg("minDisk")
        min_ram = self.int_arg("minRam")
        if min_disk is not None:
            flavors = [f for f in flavors if f["disk"] >= min_disk]
        if min_ram is not None:
            flavors = [f for f in flavors if f["ram"] >= min_ram]
        is_public = (self.get_argument("is_public", "true") or "true").lower()
        if is_public in ("true", "t", "1", "yes", "y", "on"):
            flavors = [f for f in flavors if f.get("os-flavor-access:is_public", True)]
        elif is_public in ("false", "f", "0", "no", "n", "off"):
            flavors = [f for f in flavors if not f.get("os-flavor-access:is_public", True)]
        sort_key = self.get_argument("sort_key", "flavorid")
        sort_dir = self.get_argument("sort_dir", "asc")
        keymap = {"flavorid": "id", "id": "id", "name": "name", "memory_mb": "ram", "ram": "ram", "vcpus": "vcpus",
                  "root_gb": "disk", "disk": "disk", "ephemeral_gb": "OS-FLV-EXT-DATA:ephemeral",
                  "swap": "swap", "rxtx_factor": "rxtx_factor", "created_at": "id", "description": "name",
                  "disabled": "OS-FLV-DISABLED:disabled", "is_public": "os-flavor-access:is_public"}
        if sort_key not in keymap:
            raise APIError(400, f"Invalid input for query parameters sort_key. Value: {sort_key}.")
        if sort_dir not in ("asc", "desc"):
            raise APIError(400, f"Invalid input for query parameters sort_dir. Value: {sort_dir}.")
        flavors.sort(key=lambda f: (str(f.get(keymap[sort_key]) or "") if sort_key in ("flavorid", "id", "name")
                                    else (f.get(keymap[sort_key]) or 0)), reverse=sort_dir == "desc")
        page, links = paginate(self, flavors, "id", "flavors")
        body = {"flavors": [flavor_view(self, f, detail=bool(detail)) for f in page]}
        if links:
            body["flavors_links"] = links
        self.send(body)


class FlavorHandler(NovaHandler):
    def flavor(self, flavor_id):
        f = self.cloud.flavors.get(flavor_id)
        if f is None:
            raise APIError(404, f"Flavor {flavor_id} could not be found.")
        return f

    def get(self, flavor_id):
        self.send({"flavor": flavor_view(self, self.flavor(flavor_id))})


class ExtraSpecsHandler(FlavorHandler):
    def get(self, flavor_id, key=None):
        specs = self.flavor(flavor_id).get("extra_specs") or {}
        if key is None:
            return self.send({"extra_specs": dict(specs)})
        if key not in specs:
            raise APIError(404, f"Flavor {flavor_id} has no extra specs with key {key}.")
        self.send({key: specs[key]})


# -- keypairs -------------------------------------------------------------

def _fingerprint(public_key):
    parts = public_key.strip().split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise APIError(400, "Keypair data is invalid: failed to generate fingerprint")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "Keypair data is invalid: failed to generate fingerprint")
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2))


def _generate_key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public + " Generated-by-Nova"


class KeypairsHandler(NovaHandler):
    def _key(self, name):
        return f"{self.project_id}:{name}"

    def _view(self, kp, full=False):
        out = {"name": kp["name"], "public_key": kp["public_key"], "fingerprint": kp["fingerprint"]}
        if self.ver("2.2"):
            out["type"] = kp["type"]
        if full:
            out.update({"user_id": kp["user_id"], "created_at": kp["created_at"].replace("Z", ".000000"),
                        "deleted": False, "deleted_at": None, "updated_at": None, "id": kp["id"]})
        return out

    def get(self, name=None):
        if name is not None:
            kp = self.cloud.keypairs.get(self._key(name))
            if kp is None:
                raise APIError(404, f"Keypair {name} not found for user {self.token['user']['id']}")
            return self.send({"keypair": self._view(kp, full=True)})
        kps = sorted((k for k in self.cloud.keypairs.values() if k["_project_id"] == self.project_id),
                     key=lambda k: k["name"])
        if self.ver("2.35"):
            kps, links = paginate(self, kps, "name", "os-keypairs")
        else:
            links = None
        body = {"keypairs": [{"keypair": self._view(k)} for k in kps]}
        if links:
            body["keypairs_links"] = links
        self.send(body)

    def post(self, name=None):
        if name is not None:
            raise APIError(405, "Method not allowed")
        data = self.nova_body("keypair")
        kname = data.get("name")
        if not isinstance(kname, str) or not kname:
            raise bad_input("keypair", data, "'name' is a required property")
        if len(kname) > 255 or not re.fullmatch(r"[a-zA-Z0-9 _.@-]+", kname) or not kname.strip():
            raise APIError(400, "Keypair data is invalid: Keypair name contains unsafe characters")
        ktype = data.get("type", "ssh")
        if ktype not in ("ssh", "x509") or ("type" in data and not self.ver("2.2")):
            raise bad_input("type", ktype, "'type' is not one of ['ssh', 'x509']")
        public_key = data.get("public_key")
        if public_key is None and self.ver("2.92"):
            raise bad_input("keypair", data, "'public_key' is a required property")
        quota = self.cloud.quota("key_pairs")
        if quota >= 0 and self.cloud.usage(self.project_id)["key_pairs"] >= quota:
            raise APIError(403, "Quota exceeded, too many key pairs.")
        if self._key(kname) in self.cloud.keypairs:
            raise APIError(409, f"Key pair '{kname}' already exists.")
        private = None
        if public_key is None:
            private, public_key = _generate_key()
        fp = _fingerprint(public_key) if ktype == "ssh" else \
            ":".join(hashlib.sha1(public_key.encode()).hexdigest()[i:i + 2] for i in range(0, 40, 2))
        kp = {"name": kname, "public_key": public_key, "fingerprint": fp, "type": ktype,
              "user_id": self.token["user"]["id"], "created_at": now_iso(),
              "id": len(self.cloud.keypairs) + 1, "_project_id": self.project_id}
        self.cloud.keypairs[self._key(kname)] = kp
        out = self._view(kp) | {"user_id": kp["user_id"]}
        if private is not None:
            out["private_key"] = private
        self.send({"keypair": out}, status=201 if self.ver("2.2") else 200)

    def delete(self, name=None):
        if name is None:
            raise APIError(405, "Method not allowed")
        if self.cloud.keypairs.pop(self._key(name), None) is None:
            raise APIError(404, f"Keypair {name} not found for user {self.token['user']['id']}")
        self.send(None, status=204 if self.ver("2.2") else 202)


# -- limits, quotas, AZs --------------------------------------------------

_QUOTA_KEYS = ["cores", "instances", "key_pairs", "metadata_items", "ram", "server_groups", "server_group_members"]
_LEGACY_NET_QUOTAS = {"fixed_ips": -1, "floating_ips": "floatingip", "security_group_rules": "security_group_rule",
                      "security_groups": "security_group"}
_LEGACY_FILE_QUOTAS = {"injected_file_content_bytes": 10240, "injected_file_path_bytes": 255, "injected_files": 5}


class LimitsHandler(NovaHandler):
    def get(self):
        c = self.cloud
        pid = self.project_id
        if self.is_admin and self.get_argument("tenant_id", None):
            pid = self.get_argument("tenant_id")
        u = c.usage(pid)
        q = c.quota
        absolute = {"maxImageMeta": q("metadata_items"), "maxServerMeta": q("metadata_items"),
                    "maxTotalCores": q("cores"), "maxTotalInstances": q("instances"),
                    "maxTotalKeypairs": q("key_pairs"), "maxTotalRAMSize": q("ram"),
                    "maxServerGroups": q("server_groups"), "maxServerGroupMembers": q("server_group_members"),
                    "totalCoresUsed": u["cores"], "totalInstancesUsed": u["instances"], "totalRAMUsed": u["ram"],
                    "totalServerGroupsUsed": 0}
        if not self.ver("2.36"):
            absolute.update({"maxSecurityGroupRules": q("security_group_rule"),
                             "maxSecurityGroups": q("security_group"), "maxTotalFloatingIps": q("floatingip"),
                             "totalFloatingIpsUsed": u["floatingip"], "totalSecurityGroupsUsed": u["security_group"]})
        if not self.ver("2.57"):
            absolute.update({"maxPersonality": 5, "maxPersonalitySize": 10240})
        self.send({"limits": {"absolute": absolute, "rate": []}})


class QuotaSetsHandler(NovaHandler):
    def _project(self, project_id):
        if project_id != self.project_id and not self.is_admin:
            raise APIError(403, "Policy doesn't allow os_compute_api:os-quota-sets:show to be performed.")
        return project_id

    def _set(self, project_id, detail):
        c = self.cloud
        u = c.usage(project_id) if detail else {}
        keys = list(_QUOTA_KEYS)
        values = {k: c.quota(k) for k in keys}
        if not self.ver("2.36"):
            for k, src in _LEGACY_NET_QUOTAS.items():
                values[k] = c.quota(src) if isinstance(src, str) else src
        if not self.ver("2.57"):
            values.update(_LEGACY_FILE_QUOTAS)
        if not detail:
            return {"id": project_id} | values
        used = {"cores": u.get("cores", 0), "instances": u.get("instances", 0), "ram": u.get("ram", 0),
                "key_pairs": u.get("key_pairs", 0), "floating_ips": u.get("floatingip", 0),
                "security_groups": u.get("security_group", 0),
                "security_group_rules": u.get("security_group_rule", 0)}
        return {"id": project_id} | {k: {"in_use": used.get(k, 0), "limit": v, "reserved": 0}
                                     for k, v in values.items()}

    def get(self, project_id, what=None):
        project_id = self._project(project_id)
        if what == "defaults":
            return self.send({"quota_set": self._set(project_id, False)})
        self.send({"quota_set": self._set(project_id, what == "detail")})

    def put(self, project_id, what=None):
        if what is not None:
            raise APIError(404, "The resource could not be found.")
        if not self.is_admin:
            raise APIError(403, "Policy doesn't allow os_compute_api:os-quota-sets:update to be performed.")
        data = self.nova_body("quota_set")
        quotas = self.cloud.config.data["quotas"]
        for k, v in data.items():
            if k == "force":
                continue
            target = _LEGACY_NET_QUOTAS.get(k, k)
            if not isinstance(target, str) or k not in _QUOTA_KEYS + list(_LEGACY_NET_QUOTAS):
                raise bad_input("quota_set", data, f"Additional properties are not allowed ('{k}' was unexpected)")
            try:
                quotas[target] = int(v)
            except (TypeError, ValueError):
                raise bad_input(k, v, f"'{v}' is not of type 'integer'")
        self.send({"quota_set": {k: v for k, v in self._set(project_id, False).items() if k != "id"}})


def availability_zones(cloud):
    return list(cloud.config.get("availability_zones") or ["nova"])


class AvailabilityZoneHandler(NovaHandler):
    def get(self, detail=None):
        if detail and not self.is_admin:
            raise APIError(403, "Policy doesn't allow os_compute_api:os-availability-zone:detail to be performed.")
        self.send({"availabilityZoneInfo": [{"zoneName": z, "zoneState": {"available": True}, "hosts": None}
                                            for z in availability_zones(self.cloud)]})


# -- servers: helpers -----------------------------------------------------

def _mac():
    return "fa:16:3e:%02x:%02x:%02x" % (random.randrange(256), random.randrange(256), random.randrange(256))


def first_v4_subnet(cloud, network):
    for sid in network.get("subnets", []):
        sub = cloud.subnets.get(sid)
        if sub and sub.get("ip_version") == 4:
            return sub
    return None


def make_port(cloud, project_id, network, server_id, sg_ids, fixed_ip=None):
    """A Neutron port as Nova asks Neutron for one; fixed_ips empty if the network is full."""
    sub = first_v4_subnet(cloud, network)
    fixed = []
    if sub is not None:
        ip = fixed_ip or cloud.allocate_ip(sub["id"])
        if ip:
            fixed.append({"subnet_id": sub["id"], "ip_address": ip})
    pid = new_id()
    t = now_iso()
    port = {"id": pid, "name": "", "network_id": network["id"], "tenant_id": project_id, "project_id": project_id,
            "mac_address": _mac(), "admin_state_up": True, "status": "DOWN", "device_id": server_id,
            "device_owner": "compute:nova", "fixed_ips": fixed, "allowed_address_pairs": [],
            "extra_dhcp_opts": [], "security_groups": list(sg_ids), "description": "",
            "binding:vnic_type": "normal", "binding:host_id": "", "binding:profile": {},
            "binding:vif_type": "unbound", "binding:vif_details": {}, "port_security_enabled": True,
            "dns_name": "", "dns_assignment": [{"hostname": "host-" + f["ip_address"].replace(".", "-"),
                                                "ip_address": f["ip_address"], "fqdn": ""} for f in fixed],
            "tags": [], "created_at": t, "updated_at": t, "revision_number": 1, "qos_policy_id": None,
            "qos_network_policy_id": None, "ip_allocation": "immediate", "propagate_uplink_status": False,
            "resource_request": None, "hints": None, "trusted": None}
    cloud.ports[pid] = port
    return port


def _volume(cloud, project_id, user_id, size, name="", image=None):
    """A Cinder volume Nova asks Cinder to make (boot from image/blank to volume); same shape as cinder.py's."""
    vid = new_id()
    t = _cinder_time()
    vol = {"id": vid, "name": name, "status": "available", "size": int(size), "availability_zone": "nova",
           "created_at": t, "updated_at": None, "attachments": [], "description": None,
           "volume_type": "__DEFAULT__",
           "volume_type_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "jhub-broker-local-cloud/volume-type/__DEFAULT__")),
           "snapshot_id": None, "source_volid": None, "metadata": {}, "user_id": user_id,
           "bootable": "true" if image else "false", "encrypted": False, "replication_status": None,
           "consistencygroup_id": None, "multiattach": False, "group_id": None, "provider_id": None,
           "service_uuid": None, "shared_targets": False, "cluster_name": None, "consumes_quota": True,
           "migration_status": None, "os-vol-tenant-attr:tenant_id": project_id,
           "os-vol-host-attr:host": "local@lvm#lvm", "os-vol-mig-status-attr:migstat": None,
           "os-vol-mig-status-attr:name_id": None, "_project_id": project_id, "_seq": time.monotonic()}
    if image:
        vol["volume_image_metadata"] = {"image_id": image["id"], "image_name": image["name"],
                                        "checksum": image.get("checksum"),
                                        "container_format": image.get("container_format"),
                                        "disk_format": image.get("disk_format"),
                                        "min_disk": str(image.get("min_disk", 0)),
                                        "min_ram": str(image.get("min_ram", 0)), "size": str(image.get("size", 0))}
    cloud.volumes[vid] = vol
    if cloud.vm_runner is not None:
        cloud.vm_runner.volume_path(vid)
    return vol


def _cinder_time():
    ts = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%06d" % int((ts % 1) * 1e6)


def attach_volume(cloud, server, vol, device, delete_on_termination=False, boot_index=None, tag=None):
    t = _cinder_time()
    attachment_id = new_id()
    vol["status"] = "in-use"
    vol["updated_at"] = t
    vol["attachments"].append({"id": vol["id"], "attachment_id": attachment_id, "volume_id": vol["id"],
                               "server_id": server["id"], "host_name": None, "device": device,
                               "attached_at": t})
    bdm = {"volume_id": vol["id"], "device": device, "delete_on_termination": bool(delete_on_termination),
           "boot_index": boot_index, "attachment_id": attachment_id, "tag": tag, "bdm_uuid": new_id()}
    server["_bdms"].append(bdm)
    server["os-extended-volumes:volumes_attached"].append(
        {"id": vol["id"], "delete_on_termination": bool(delete_on_termination)})
    return bdm


def detach_volume(cloud, server, volume_id, delete=False):
    server["_bdms"] = [b for b in server["_bdms"] if b["volume_id"] != volume_id]
    server["os-extended-volumes:volumes_attached"] = [
        v for v in server["os-extended-volumes:volumes_attached"] if v["id"] != volume_id]
    vol = cloud.volumes.get(volume_id)
    if vol is None:
        return
    vol["attachments"] = [a for a in vol["attachments"] if a["server_id"] != server["id"]]
    vol["updated_at"] = _cinder_time()
    if delete:
        cloud.volumes.pop(volume_id, None)
    elif not vol["attachments"]:
        vol["status"] = "available"


def next_device(server):
    used = {b["device"] for b in server["_bdms"]}
    if server["image"]:
        used.add("/dev/vda")
    for ch in "abcdefghijklmnopqrstuvwxyz":
        dev = f"/dev/vd{ch}"
        if dev not in used:
            return dev
    raise APIError(400, "No free disk device names for prefix 'vd'")


def addresses(cloud, server):
    """``addresses`` as Nova shows them, from the server's ports and floating IPs."""
    out = {}
    ports = [p for p in cloud.ports.values() if p.get("device_id") == server["id"]]
    order = {pid: i for i, pid in enumerate(server.get("_ports", []))}
    ports.sort(key=lambda p: order.get(p["id"], len(order)))
    for p in ports:
        net = cloud.networks.get(p["network_id"])
        name = net["name"] if net else p["network_id"]
        entries = out.setdefault(name, [])
        for f in p["fixed_ips"]:
            entries.append({"version": 6 if ":" in f["ip_address"] else 4, "addr": f["ip_address"],
                            "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": p["mac_address"]})
        for fip in cloud.floating_ips.values():
            if fip.get("port_id") == p["id"] and fip.get("floating_ip_address"):
                entries.append({"version": 4, "addr": fip["floating_ip_address"], "OS-EXT-IPS:type": "floating",
                                "OS-EXT-IPS-MAC:mac_addr": p["mac_address"]})
    return out


def security_group_names(cloud, server):
    ports = [p for p in cloud.ports.values() if p.get("device_id") == server["id"]]
    if not ports:
        return server.get("security_groups", [])
    names = []
    for p in ports:
        for sid in p.get("security_groups", []):
            sg = cloud.security_groups.get(sid)
            if sg and {"name": sg["name"]} not in names:
                names.append({"name": sg["name"]})
    return names


def _hostname(name):
    """The hostname Nova derives from a display name (lower case, letters, digits and dashes)."""
    host = re.sub(r"[^a-z0-9.-]+", "-", (name or "").lower()).strip(".-")[:63]
    return host or "server"


def server_view(h, s, detail=True):
    cloud = h.cloud
    links = h.links("servers", s["id"])
    if not detail:
        return {"id": s["id"], "name": s["name"], "links": links}
    s["addresses"] = addresses(cloud, s)
    out = {k: v for k, v in s.items() if not k.startswith("_")}
    out["links"] = links
    if getattr(h, "is_admin", False):
        # extended server attributes are admin-only, as with Nova's default policy
        out["OS-EXT-SRV-ATTR:host"] = s.get("_host")
        out["OS-EXT-SRV-ATTR:hypervisor_hostname"] = s.get("_host")
        out["OS-EXT-SRV-ATTR:instance_name"] = s.get("_instance_name", "")
        if h.ver("2.3"):
            out["OS-EXT-SRV-ATTR:reservation_id"] = s.get("_reservation_id")
            out["OS-EXT-SRV-ATTR:launch_index"] = s.get("_launch_index", 0)
            out["OS-EXT-SRV-ATTR:kernel_id"] = ""
            out["OS-EXT-SRV-ATTR:ramdisk_id"] = ""
            out["OS-EXT-SRV-ATTR:hostname"] = _hostname(s["name"])
            out["OS-EXT-SRV-ATTR:root_device_name"] = "/dev/vda"
            out["OS-EXT-SRV-ATTR:user_data"] = s.get("_user_data_b64")
    elif h.ver("2.90"):
        out["OS-EXT-SRV-ATTR:hostname"] = _hostname(s["name"])
    out["security_groups"] = security_group_names(cloud, s)
    if not out["security_groups"]:
        out.pop("security_groups")
    if s["image"]:
        out["image"] = {"id": s["image"]["id"],
                        "links": [{"rel": "bookmark", "href": f"{cloud.base_url}{PREFIX}/images/{s['image']['id']}"}]}
    if not h.ver("2.47"):
        out["flavor"] = {"id": s["_flavor_id"],
                         "links": [{"rel": "bookmark", "href": f"{cloud.base_url}{PREFIX}/flavors/{s['_flavor_id']}"}]}
    else:
        out["flavor"] = dict(s["flavor"])
    vols = s["os-extended-volumes:volumes_attached"]
    out["os-extended-volumes:volumes_attached"] = [dict(v) if h.ver("2.3") else {"id": v["id"]} for v in vols]
    for key, since in (("locked", "2.9"), ("description", "2.19"), ("tags", "2.26"),
                       ("trusted_image_certificates", "2.63"), ("server_groups", "2.71"),
                       ("locked_reason", "2.73"), ("pinned_availability_zone", "2.96")):
        if not h.ver(since):
            out.pop(key, None)
    if "fault" in out:
        out["fault"] = {k: v for k, v in out["fault"].items() if k != "details" or h.is_admin}
    return out


def _set_state(s, status, vm_state, task_state=None, power_state=None):
    s["status"] = status
    s["OS-EXT-STS:vm_state"] = vm_state
    s["OS-EXT-STS:task_state"] = task_state
    if power_state is not None:
        s["OS-EXT-STS:power_state"] = power_state
    s["updated"] = now_iso()
    s["_updated_ts"] = time.time()


async def _release_ports(cloud, server):
    """Delete the ports Nova made, unbind the ones it was given; floating IPs on them are disassociated."""
    created = set(server.get("_created_ports", []))
    for pid in list(server.get("_ports", [])):
        port = cloud.ports.get(pid)
        if port is None:
            continue
        for fip in list(cloud.floating_ips.values()):
            if fip.get("port_id") == pid:
                had_fixed = fip.get("fixed_ip_address")
                fip.update({"port_id": None, "fixed_ip_address": None, "status": "DOWN", "updated_at": now_iso()})
                if cloud.vm_runner is not None and had_fixed:
                    try:
                        await cloud.vm_runner.remove_floating_ip(fip["floating_ip_address"])
                    except Exception:  # noqa: BLE001
                        log.exception("dropping floating IP %s failed", fip["floating_ip_address"])
        if pid in created:
            cloud.ports.pop(pid, None)
        else:
            port.update({"device_id": "", "device_owner": "", "status": "DOWN", "binding:host_id": "",
                         "binding:vif_type": "unbound", "updated_at": now_iso()})
    server["_ports"] = []
    server["_created_ports"] = []


async def _fail(cloud, s, message, code=500):
    _set_state(s, "ERROR", "error", None, 0)
    s["fault"] = {"code": code, "message": message, "created": now_iso()}
    await _release_ports(cloud, s)


async def _build(cloud, server_id):
    await asyncio.sleep(float(cloud.config["boot_delay"]))
    s = cloud.servers.get(server_id)
    if s is None or s["OS-EXT-STS:task_state"] == "deleting":
        return
    failures = cloud.config.data.get("boot_failures") or []
    for rule in list(failures):
        try:
            if not re.search(rule.get("name", ".*"), s["name"]):
                continue
        except re.error:
            continue
        if rule.get("count") is not None:
            rule["count"] = int(rule["count"]) - 1
            if rule["count"] <= 0:
                failures.remove(rule)
        await _fail(cloud, s, rule.get("message") or "No valid host was found. ")
        return
    if s.get("_build_error"):
        await _fail(cloud, s, s.pop("_build_error"))
        return
    s["_host"] = "localhost"
    s["hostId"] = hashlib.sha224((s["tenant_id"] + "localhost").encode()).hexdigest()
    for pid in s["_ports"]:
        port = cloud.ports.get(pid)
        if port:
            port.update({"status": "ACTIVE", "binding:host_id": "localhost", "binding:vif_type": "ovs",
                         "binding:vif_details": {"port_filter": True}, "updated_at": now_iso()})
    if cloud.vm_runner is not None:
        try:
            await cloud.vm_runner.boot(s)
        except Exception as e:  # noqa: BLE001 - any runner failure is a build failure
            log.warning("boot of %s failed: %s", server_id, e)
            if cloud.servers.get(server_id) is s and s["OS-EXT-STS:task_state"] != "deleting":
                await _fail(cloud, s, str(getattr(e, "message", None) or e) or e.__class__.__name__)
            return
    if cloud.servers.get(server_id) is not s or s["OS-EXT-STS:task_state"] == "deleting":
        return
    _set_state(s, "ACTIVE", "active", None, 1)
    s["OS-SRV-USG:launched_at"] = now_iso().replace("Z", ".000000")


async def _destroy(cloud, server_id):
    await asyncio.sleep(float(cloud.config["delete_delay"]))
    s = cloud.servers.get(server_id)
    if s is None:
        return
    if cloud.vm_runner is not None:
        try:
            await cloud.vm_runner.stop(server_id)
        except Exception:  # noqa: BLE001
            log.exception("stopping VM %s failed", server_id)
    await _release_ports(cloud, s)
    for bdm in list(s["_bdms"]):
        detach_volume(cloud, s, bdm["volume_id"], delete=bdm["delete_on_termination"])
    cloud.servers.pop(server_id, None)


def _spawn(coro):
    task = asyncio.ensure_future(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


_TASKS = set()

# list-servers query parameters Nova's schema knows (unknown ones are a 400 since 2.75)
_SERVER_QUERY = {
    "user_id", "project_id", "tenant_id", "launch_index", "image_ref", "image", "kernel_id", "ramdisk_id",
    "hostname", "key_name", "power_state", "vm_state", "task_state", "host", "node", "flavor", "reservation_id",
    "launched_at", "terminated_at", "availability_zone", "name", "display_name", "description",
    "display_description", "locked_by", "uuid", "root_device_name", "config_drive", "access_ip_v4",
    "access_ip_v6", "auto_disk_config", "progress", "sort_key", "sort_dir", "all_tenants", "soft_deleted",
    "deleted", "status", "changes-since", "changes-before", "ip", "ip6", "created_at", "block_device_mapping",
    "services", "metadata", "pci_devices", "security_groups", "info_cache", "system_metadata", "tags",
    "tags-any", "not-tags", "not-tags-any", "limit", "marker", "locked", "pinned_availability_zone",
}
_STATUSES = {"ACTIVE", "BUILD", "DELETED", "ERROR", "HARD_REBOOT", "MIGRATING", "PASSWORD", "PAUSED", "REBOOT",
             "REBUILD", "RESCUE", "RESIZE", "REVERT_RESIZE", "SHELVED", "SHELVED_OFFLOADED", "SHUTOFF",
             "SOFT_DELETED", "SUSPENDED", "UNKNOWN", "VERIFY_RESIZE"}


def _check_tags(tags, field="tags"):
    if not isinstance(tags, list) or len(tags) > 50:
        raise bad_input(field, tags, "is too long" if isinstance(tags, list) else "is not of type 'array'")
    for t in tags:
        if not isinstance(t, str) or not (1 <= len(t) <= 60) or "," in t or "/" in t:
            raise bad_input(field, tags, f"'{t}' is not a valid tag")
    if len(set(tags)) != len(tags):
        raise bad_input(field, tags, "has non-unique elements")


def _check_metadata(cloud, metadata, field="metadata"):
    if not isinstance(metadata, dict):
        raise bad_input(field, metadata, f"{metadata!r} is not of type 'object'")
    for k, v in metadata.items():
        if not isinstance(k, str) or not (1 <= len(k) <= 255):
            raise bad_input(field, metadata, f"'{k}' does not match any of the regexes")
        if not isinstance(v, str) or len(v) > 255:
            raise bad_input(field, metadata, f"{v!r} is not of type 'string'" if not isinstance(v, str)
                            else f"'{v}' is too long")
    allowed = cloud.quota("metadata_items")
    if 0 <= allowed < len(metadata):
        raise APIError(403, f"Quota exceeded for metadata_items: Requested {len(metadata)}, but already used 0 of "
                            f"{allowed} metadata_items")


# -- servers --------------------------------------------------------------

class ServersHandler(NovaHandler):
    def get(self, detail=None):
        args = {k: self.get_argument(k) for k in self.request.query_arguments}
        if self.ver("2.75"):
            unknown = sorted(set(args) - _SERVER_QUERY)
            if unknown:
                raise APIError(400, f"Invalid input for query parameters {unknown[0]}. Value: "
                                    f"{args[unknown[0]]}. Additional properties are not allowed "
                                    f"('{unknown[0]}' was unexpected)")
        servers = list(self.cloud.servers.values())
        all_tenants = self.is_admin and "all_tenants" in args and args["all_tenants"].lower() not in ("0", "false", "off", "no")
        if not all_tenants:
            pid = args.get("project_id") or args.get("tenant_id") if self.is_admin else None
            servers = [s for s in servers if s["tenant_id"] == (pid or self.project_id)]
        elif args.get("project_id") or args.get("tenant_id"):
            pid = args.get("project_id") or args.get("tenant_id")
            servers = [s for s in servers if s["tenant_id"] == pid]
        if "status" in args:
            statuses = {st.upper() for st in self.get_arguments("status")}
            if not statuses & _STATUSES:
                if self.ver("2.38"):
                    raise APIError(400, "Invalid status value")
                servers = []
            servers = [s for s in servers if s["status"] in statuses]
        name = args.get("name") or args.get("display_name")
        if name:
            try:
                rx = re.compile(name)
                servers = [s for s in servers if rx.search(s["name"])]
            except re.error:
                servers = [s for s in servers if name in s["name"]]
        for key, field in (("ip", "4"), ("ip6", "6")):
            if args.get(key):
                try:
                    rx = re.compile(args[key])
                except re.error:
                    rx = re.compile(re.escape(args[key]))
                servers = [s for s in servers if any(
                    rx.search(a["addr"]) for addrs in addresses(self.cloud, s).values() for a in addrs
                    if str(a["version"]) == field)]
        if args.get("image"):
            img = _ref_id(args["image"])
            servers = [s for s in servers if s["image"] and s["image"]["id"] == img]
        if args.get("flavor"):
            fl = _ref_id(args["flavor"])
            servers = [s for s in servers if s["_flavor_id"] == fl]
        if args.get("key_name"):
            servers = [s for s in servers if s["key_name"] == args["key_name"]]
        if args.get("availability_zone"):
            servers = [s for s in servers if s["OS-EXT-AZ:availability_zone"] == args["availability_zone"]]
        if args.get("uuid"):
            servers = [s for s in servers if s["id"] == args["uuid"]]
        if args.get("vm_state"):
            servers = [s for s in servers if s["OS-EXT-STS:vm_state"] in self.get_arguments("vm_state")]
        for key, cmp in (("changes-since", lambda u, t: u >= t), ("changes-before", lambda u, t: u <= t)):
            if key in args:
                t = _parse_time(args[key])
                if t is None:
                    raise APIError(400, f"Invalid input for query parameters {key}. Value: {args[key]}. "
                                        f"'{args[key]}' is not a 'date-time'")
                servers = [s for s in servers if cmp(s["_updated_ts"], t)]
        if "tags" in args and self.ver("2.26"):
            want = {t for t in args["tags"].split(",") if t}
            servers = [s for s in servers if want <= set(s["tags"])]
        if "tags-any" in args and self.ver("2.26"):
            want = {t for t in args["tags-any"].split(",") if t}
            servers = [s for s in servers if want & set(s["tags"])]
        if "not-tags" in args and self.ver("2.26"):
            want = {t for t in args["not-tags"].split(",") if t}
            servers = [s for s in servers if not (want <= set(s["tags"]))]
        if "not-tags-any" in args and self.ver("2.26"):
            want = {t for t in args["not-tags-any"].split(",") if t}
            servers = [s for s in servers if not (want & set(s["tags"]))]
        sort_key = args.get("sort_key", "created_at")
        sort_dir = args.get("sort_dir", "desc")
        keyf = {"created_at": lambda s: (s["_created_ts"], s["id"]), "updated_at": lambda s: s["_updated_ts"],
                "display_name": lambda s: s["name"], "uuid": lambda s: s["id"],
                "launched_at": lambda s: s.get("OS-SRV-USG:launched_at") or "",
                "vm_state": lambda s: s["OS-EXT-STS:vm_state"]}.get(sort_key, lambda s: (s["_created_ts"], s["id"]))
        servers.sort(key=keyf, reverse=sort_dir != "asc")
        page, links = paginate(self, servers, "id", "servers")
        body = {"servers": [server_view(self, s, detail=bool(detail)) for s in page]}
        if links:
            body["servers_links"] = links
        self.send(body)

    def post(self, detail=None):
        if detail:
            raise APIError(405, "Method not allowed")
        data = self.nova_body("server")
        cloud = self.cloud
        pid = self.project_id
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise bad_input("server", data, "'name' is a required property" if name is None
                            else f"'{name}' is not a valid server name")
        if "flavorRef" not in data:
            raise bad_input("server", data, "'flavorRef' is a required property")
        for key, since in (("tags", "2.52"), ("description", "2.19"), ("trusted_image_certificates", "2.63"),
                           ("hostname", "2.90")):
            if key in data and not self.ver(since):
                raise bad_input("server", data, f"Additional properties are not allowed ('{key}' was unexpected)")
        flavor_id = _ref_id(data["flavorRef"])
        flavor = cloud.flavors.get(flavor_id)
        if flavor is None:
            raise APIError(400, f"Flavor {data['flavorRef']} could not be found.")
        # block devices
        bdms = data.get("block_device_mapping_v2") or []
        if not isinstance(bdms, list):
            raise bad_input("block_device_mapping_v2", bdms, "is not of type 'array'")
        boot_bdm = None
        for b in bdms:
            if not isinstance(b, dict):
                raise bad_input("block_device_mapping_v2", bdms, "is not of type 'object'")
            bi = b.get("boot_index")
            if bi is not None and str(bi) not in ("-1", "None") and int(bi) == 0:
                boot_bdm = b
        image = None
        image_ref = data.get("imageRef")
        if boot_bdm is not None and boot_bdm.get("source_type") == "image" and not image_ref:
            image_ref = boot_bdm.get("uuid")
        boot_from_volume = boot_bdm is not None and boot_bdm.get("destination_type") == "volume"
        if image_ref and not (boot_from_volume and boot_bdm.get("source_type") == "volume"):
            iid = _ref_id(image_ref)
            image = cloud.images.get(iid)
            if image is None or not _image_visible(image, pid, self.is_admin):
                raise APIError(400, f"Image {iid} could not be found.")
            if image["status"] != "active":
                raise APIError(400, f"Image {iid} is not active.")
        elif not boot_from_volume:
            raise APIError(400, "Block Device Mapping is Invalid: Boot sequence for the instance and image/block "
                                "device mapping combination is not valid.")
        if image is not None:
            if flavor["ram"] < image["min_ram"]:
                raise APIError(400, "Flavor's memory is too small for requested image.")
            if not boot_from_volume and flavor["disk"]:
                if flavor["disk"] < image["min_disk"]:
                    raise APIError(400, "Flavor's disk is smaller than the minimum size specified in image metadata. "
                                        f"Flavor disk is {flavor['disk'] * GiB} bytes, minimum size is "
                                        f"{image['min_disk'] * GiB} bytes.")
                if (image.get("size") or 0) > flavor["disk"] * GiB:
                    raise APIError(400, "Flavor's disk is too small for requested image. Flavor disk is "
                                        f"{flavor['disk'] * GiB} bytes, image is {image['size']} bytes.")
        # key pair
        key_name = data.get("key_name")
        if key_name is not None and f"{pid}:{key_name}" not in cloud.keypairs:
            raise APIError(400, "Invalid key_name provided.")
        # availability zone
        az = data.get("availability_zone") or "nova"
        az = az.split(":", 1)[0] or "nova"
        if az not in availability_zones(cloud):
            raise APIError(400, "The requested availability zone is not available")
        metadata = data.get("metadata", {})
        _check_metadata(cloud, metadata)
        tags = data.get("tags", [])
        _check_tags(tags)
        user_data = data.get("user_data")
        decoded = None
        if user_data is not None:
            if not isinstance(user_data, str) or len(user_data) > 65535:
                raise bad_input("user_data", user_data, "is too long" if isinstance(user_data, str)
                                else "is not of type 'string'")
            try:
                decoded = base64.b64decode(user_data, validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                raise APIError(400, "User data needs to be valid base 64.")
        # networks
        networks = data.get("networks")
        if networks is None:
            if self.ver("2.37"):
                raise bad_input("server", data, "'networks' is a required property")
            networks = "auto"
        if isinstance(networks, str):
            if networks not in ("auto", "none") or not self.ver("2.37") and "networks" in data:
                raise bad_input("networks", networks, f"'{networks}' is not one of ['auto', 'none']")
        elif not isinstance(networks, list):
            raise bad_input("networks", networks, "is not of type 'array'")
        net_plan = self._plan_networks(networks)
        # security groups
        sg_ids = []
        for g in data.get("security_groups") or [{"name": "default"}]:
            gname = g.get("name") if isinstance(g, dict) else None
            if not gname:
                raise bad_input("security_groups", data.get("security_groups"), "'name' is a required property")
            if gname == "default":
                cloud.default_security_group(pid)
            matches = [sg for sg in cloud.security_groups.values()
                       if sg["project_id"] == pid and (sg["id"] == gname or sg["name"] == gname)]
            if not matches:
                raise APIError(400, f"Security group {gname} not found for project {pid}.")
            if len(matches) > 1 and not any(m["id"] == gname for m in matches):
                raise APIError(409, f"Multiple security groups found matching '{gname}'. Use an ID to be "
                                    "more specific.")
            sg = next((m for m in matches if m["id"] == gname), matches[0])
            if sg["id"] not in sg_ids:
                sg_ids.append(sg["id"])
        # count and quotas
        try:
            min_count = int(data.get("min_count", 1))
            max_count = int(data.get("max_count", min_count))
        except (TypeError, ValueError):
            raise bad_input("min_count", data.get("min_count"), "is not of type 'integer'")
        if min_count < 1 or max_count < min_count:
            raise APIError(400, "min_count must be <= max_count")
        count = self._check_quota(flavor, min_count, max_count)
        nports = sum(1 for n in net_plan if n[0] == "net") * count
        pq = cloud.quota("port")
        if nports and 0 <= pq < cloud.usage(pid)["port"] + nports:
            raise APIError(403, "Maximum number of ports exceeded")
        # volumes
        vol_plan = self._plan_volumes(bdms, image, flavor, count)
        first = None
        for i in range(count):
            sname = name if count == 1 else f"{name}-{i + 1}"
            s = self._create_one(sname, data, flavor, image, key_name, az, metadata, tags, decoded, user_data,
                                 net_plan, sg_ids, vol_plan)
            first = first or s
            # one reservation per request; launch_index numbers the servers it made
            s["_reservation_id"], s["_launch_index"] = first["_reservation_id"], i
        out = {"id": first["id"], "links": self.links("servers", first["id"]), "OS-DCF:diskConfig": "MANUAL",
               "security_groups": [{"name": cloud.security_groups[g]["name"]} for g in sg_ids],
               "adminPass": first["_admin_pass"]}
        if data.get("return_reservation_id"):
            out = {"reservation_id": first["_reservation_id"]}
        self.send({"server": out} if "id" in out else out, status=202,
                  headers={"Location": f"{self.url}/servers/{first['id']}"})

    def _check_quota(self, flavor, min_count, max_count):
        c = self.cloud
        u = c.usage(self.project_id)
        per = {"instances": 1, "cores": flavor["vcpus"], "ram": flavor["ram"]}
        quotas = {k: c.quota(k) for k in per}

        def headroom(k):
            return float("inf") if quotas[k] < 0 else (quotas[k] - u[k]) // per[k] if per[k] else float("inf")
        allowed = min(headroom(k) for k in per)
        if allowed >= max_count:
            return max_count
        if allowed >= min_count:
            return int(allowed)
        overs = sorted(k for k in per if quotas[k] >= 0 and u[k] + per[k] * min_count > quotas[k])
        req = {"instances": str(min_count) if min_count == max_count else f"{min_count}-{max_count}",
               "cores": str(per["cores"] * min_count), "ram": str(per["ram"] * min_count)}
        msg = (f"Quota exceeded for {', '.join(overs)}: Requested {', '.join(req[o] for o in overs)}, "
               f"but already used {', '.join(str(u[o]) for o in overs)} of "
               f"{', '.join(str(quotas[o]) for o in overs)} {', '.join(overs)}")
        raise APIError(403, msg)

    def _plan_networks(self, networks):
        """[("net", network, fixed_ip, tag) | ("port", port, None, tag)]"""
        c = self.cloud
        pid = self.project_id
        if networks == "none":
            return []
        if networks == "auto":
            nets = [n for n in c.networks.values() if not n.get("router:external") and n["status"] == "ACTIVE"
                    and (n["project_id"] == pid or n.get("shared"))]
            if not nets:
                raise APIError(400, f"Unable to automatically allocate a network for project {pid}")
            if len(nets) > 1:
                own = [n for n in nets if n["project_id"] == pid]
                if len(own) != 1:
                    raise APIError(409, "Multiple possible networks found, use a Network ID to be more specific.")
                nets = own
            return [("net", nets[0], None, None)]
        plan = []
        for n in networks:
            if not isinstance(n, dict):
                raise bad_input("networks", networks, "is not of type 'object'")
            if n.get("port"):
                port = c.ports.get(n["port"])
                if port is None or (port["project_id"] != pid and not self.is_admin):
                    raise APIError(400, f"Port id {n['port']} could not be found.")
                if port.get("device_id"):
                    raise APIError(409, f"Port {n['port']} is still in use.")
                plan.append(("port", port, None, n.get("tag")))
                continue
            net_id = n.get("uuid")
            net = c.networks.get(net_id or "")
            if net is None or not (net["project_id"] == pid or net.get("shared") or self.is_admin):
                raise APIError(400, f"Network {net_id} could not be found.")
            fixed = n.get("fixed_ip")
            if fixed and any(f["ip_address"] == fixed for p in c.ports.values() for f in p["fixed_ips"]):
                raise APIError(409, f"Fixed IP address {fixed} is already in use on instance .")
            if first_v4_subnet(c, net) is None and not fixed:
                raise APIError(400, f"Network {net_id} requires a subnet in order to boot instances on.")
            plan.append(("net", net, fixed, n.get("tag")))
        return plan

    def _plan_volumes(self, bdms, image, flavor, count):
        c = self.cloud
        plan = []
        new_gb = 0
        for b in bdms:
            src, dst = b.get("source_type"), b.get("destination_type", "local" if b.get("source_type") == "image" else "volume")
            bi = b.get("boot_index")
            bi = None if bi in (None, "None", -1, "-1") else int(bi)
            if src == "image" and dst == "local":
                continue
            if dst != "volume":
                continue
            if src == "volume":
                vol = c.volumes.get(b.get("uuid") or "")
                if vol is None or (vol["_project_id"] != self.project_id and not self.is_admin):
                    raise APIError(400, f"Block Device Mapping is Invalid: failed to get volume {b.get('uuid')}.")
                if vol["status"] != "available":
                    raise APIError(400, f"Invalid volume: volume '{vol['id']}' status must be 'available'. "
                                        f"Currently in '{vol['status']}'")
                if count > 1:
                    raise APIError(400, "Block Device Mapping is Invalid: Boot sequence for the instance and "
                                        "image/block device mapping combination is not valid.")
                plan.append(("volume", vol, b, bi))
            elif src in ("image", "blank"):
                size = b.get("volume_size")
                if size is None:
                    if src == "blank":
                        raise APIError(400, "Block Device Mapping is Invalid: You specified more local devices "
                                            "than the limit allows")
                    size = max(image["min_disk"] if image else 1, 1)
                size = int(size)
                if src == "image" and image and size < image["min_disk"]:
                    raise APIError(400, "Volume is smaller than the minimum size specified in image metadata. "
                                        f"Volume size is {size * GiB} bytes, minimum size is "
                                        f"{image['min_disk'] * GiB} bytes.")
                new_gb += size * count
                plan.append(("new", src, b, bi, size))
            else:
                raise APIError(400, "Block Device Mapping is Invalid: Boot sequence for the instance and "
                                    "image/block device mapping combination is not valid.")
        return plan

    def _create_one(self, name, data, flavor, image, key_name, az, metadata, tags, decoded, raw_user_data,
                    net_plan, sg_ids, vol_plan):
        c = self.cloud
        pid = self.project_id
        sid = new_id()
        t = time.time()
        s = {
            "id": sid, "name": name, "status": "BUILD", "tenant_id": pid, "user_id": self.token["user"]["id"],
            "metadata": dict(metadata), "tags": list(tags), "hostId": "", "addresses": {},
            "created": now_iso(t), "updated": now_iso(t),
            "image": {"id": image["id"]} if image is not None and not any(
                p[0] == "volume" and p[3] == 0 or p[0] == "new" and p[3] == 0 for p in vol_plan) else "",
            "flavor": {"vcpus": flavor["vcpus"], "ram": flavor["ram"], "disk": flavor["disk"],
                       "ephemeral": flavor.get("OS-FLV-EXT-DATA:ephemeral", 0), "swap": int(flavor.get("swap") or 0),
                       "original_name": flavor["name"], "extra_specs": dict(flavor.get("extra_specs") or {})},
            "key_name": key_name,
            "security_groups": [{"name": c.security_groups[g]["name"]} for g in sg_ids],
            "OS-EXT-STS:vm_state": "building", "OS-EXT-STS:task_state": "spawning", "OS-EXT-STS:power_state": 0,
            "OS-EXT-AZ:availability_zone": az, "OS-SRV-USG:launched_at": None, "OS-SRV-USG:terminated_at": None,
            "OS-DCF:diskConfig": "MANUAL", "accessIPv4": data.get("accessIPv4", ""),
            "accessIPv6": data.get("accessIPv6", ""), "config_drive": "True" if data.get("config_drive") else "",
            "progress": 0, "locked": False, "locked_reason": None, "description": data.get("description"),
            "os-extended-volumes:volumes_attached": [], "trusted_image_certificates": None, "server_groups": [],
            "pinned_availability_zone": data.get("availability_zone") and az or None,
            "_project_id": pid, "_user_data": decoded, "_user_data_b64": raw_user_data, "_ports": [],
            "_created_ports": [], "_fixed_ip": None, "_flavor_id": flavor["id"], "_bdms": [],
            "_created_ts": t, "_updated_ts": t, "_admin_pass": "".join(
                random.choice("abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(12)),
            "_reservation_id": "r-" + new_id()[:8], "_key_public": None,
            "_instance_name": "instance-%08x" % next(_INSTANCE_NUMBERS),
        }
        if key_name:
            s["_key_public"] = c.keypairs[f"{pid}:{key_name}"]["public_key"]
        c.servers[sid] = s
        for kind, obj, fixed, _tag in net_plan:
            if kind == "port":
                obj.update({"device_id": sid, "device_owner": "compute:nova", "updated_at": now_iso()})
                s["_ports"].append(obj["id"])
                port = obj
            else:
                port = make_port(c, pid, obj, sid, sg_ids, fixed)
                s["_ports"].append(port["id"])
                s["_created_ports"].append(port["id"])
                if not port["fixed_ips"]:
                    s["_build_error"] = (f"Build of instance {sid} aborted: Failed to allocate the network(s), "
                                         "not rescheduling.")
            if s["_fixed_ip"] is None:
                s["_fixed_ip"] = next((f["ip_address"] for f in port["fixed_ips"] if ":" not in f["ip_address"]),
                                      None)
        for entry in sorted(vol_plan, key=lambda p: (p[3] != 0, p[3] if p[3] is not None else 99)):
            bi = entry[3]
            b = entry[2]
            dev = b.get("device_name") or ("/dev/vda" if bi == 0 else next_device(s))
            if entry[0] == "volume":
                vol = entry[1]
            else:
                vq, gq = c.quota("volumes"), c.quota("gigabytes")
                u = c.usage(pid)
                if 0 <= vq < u["volumes"] + 1 or 0 <= gq < u["gigabytes"] + entry[4]:
                    s["_build_error"] = (f"Build of instance {sid} aborted: VolumeLimitExceeded: Maximum number "
                                         "of volumes allowed (%s) exceeded" % vq)
                    continue
                vol = _volume(c, pid, s["user_id"], entry[4], image=image if entry[1] == "image" else None)
            attach_volume(c, s, vol, dev, delete_on_termination=b.get("delete_on_termination", False)
                          if entry[0] == "volume" else b.get("delete_on_termination", False),
                          boot_index=bi, tag=b.get("tag"))
        _spawn(_build(c, sid))
        return s


def _image_visible(image, project_id, is_admin=False):
    return (is_admin or image.get("visibility") in ("public", "community") or image.get("owner") in (None, project_id)
            or project_id in image.get("_members", []))


class ServerHandler(NovaHandler):
    def get(self, server_id):
        self.send({"server": server_view(self, self.server_or_404(server_id))})

    def put(self, server_id):
        s = self.server_or_404(server_id)
        data = self.nova_body("server")
        for k, v in data.items():
            if k == "name":
                if not isinstance(v, str) or not v.strip() or len(v) > 255:
                    raise bad_input("name", v, f"'{v}' is not a valid server name")
                s["name"] = v
            elif k == "description" and self.ver("2.19"):
                s["description"] = v
            elif k in ("accessIPv4", "accessIPv6"):
                s[k] = v
            else:
                raise bad_input("server", data, f"Additional properties are not allowed ('{k}' was unexpected)")
        s["updated"] = now_iso()
        s["_updated_ts"] = time.time()
        self.send({"server": server_view(self, s)})

    def delete(self, server_id):
        s = self.server_or_404(server_id)
        if s["locked"] and not self.is_admin:
            raise APIError(409, f"Instance {server_id} is locked")
        if s["OS-EXT-STS:task_state"] != "deleting":
            s["OS-EXT-STS:task_state"] = "deleting"
            s["updated"] = now_iso()
            s["_updated_ts"] = time.time()
            _spawn(_destroy(self.cloud, server_id))
        self.send(None, status=204)


class ServerTagsHandler(NovaHandler):
    min_microversion = (2, 26)

    def _server(self, server_id, modify=False):
        s = self.server_or_404(server_id)
        if modify:
            state = s["OS-EXT-STS:vm_state"]
            if state not in ("active", "paused", "suspended", "stopped", "shelved", "shelved_offloaded"):
                raise APIError(409, f"Cannot 'update tags' instance {server_id} while it is in vm_state {state}")
        return s

    def _touch(self, s):
        s["updated"] = now_iso()
        s["_updated_ts"] = time.time()

    def get(self, server_id, tag=None):
        s = self._server(server_id)
        if tag is None:
            return self.send({"tags": list(s["tags"])})
        if tag not in s["tags"]:
            raise APIError(404, f"Tag {tag} could not be found.")
        self.send(None, status=204)

    def put(self, server_id, tag=None):
        s = self._server(server_id, modify=True)
        if tag is None:
            tags = self.body().get("tags")
            if tags is None:
                raise bad_input("tags", None, "'tags' is a required property")
            _check_tags(tags)
            s["tags"] = list(tags)
            self._touch(s)
            return self.send({"tags": list(s["tags"])})
        _check_tags([tag], "tag")
        if tag in s["tags"]:
            return self.send(None, status=204)
        if len(s["tags"]) >= 50:
            raise APIError(400, "The number of tags exceeded the per-server limit 50")
        s["tags"].append(tag)
        self._touch(s)
        self.send(None, status=201, headers={"Location": f"{self.url}/servers/{server_id}/tags/{tag}"})

    def delete(self, server_id, tag=None):
        s = self._server(server_id, modify=True)
        if tag is None:
            s["tags"] = []
        elif tag not in s["tags"]:
            raise APIError(404, f"Tag {tag} could not be found.")
        else:
            s["tags"].remove(tag)
        self._touch(s)
        self.send(None, status=204)


class ServerMetadataHandler(NovaHandler):
    def _server(self, server_id, modify=False):
        s = self.server_or_404(server_id)
        if modify:
            state = s["OS-EXT-STS:vm_state"]
            if state not in ("active", "paused", "suspended", "stopped", "shelved", "shelved_offloaded", "building"):
                raise APIError(409, f"Cannot 'update_instance_metadata' instance {server_id} while it is in "
                                    f"vm_state {state}")
        return s

    def _store(self, s, md):
        _check_metadata(self.cloud, md)
        s["metadata"] = md
        s["updated"] = now_iso()
        s["_updated_ts"] = time.time()

    def get(self, server_id, key=None):
        s = self._server(server_id)
        if key is None:
            return self.send({"metadata": dict(s["metadata"])})
        if key not in s["metadata"]:
            raise APIError(404, "Metadata item was not found")
        self.send({"meta": {key: s["metadata"][key]}})

    def post(self, server_id, key=None):
        if key is not None:
            raise APIError(405, "Method not allowed")
        s = self._server(server_id, modify=True)
        md = self.body().get("metadata")
        if not isinstance(md, dict):
            raise bad_input("metadata", md, "'metadata' is a required property")
        self._store(s, dict(s["metadata"]) | md)
        self.send({"metadata": dict(s["metadata"])})

    def put(self, server_id, key=None):
        s = self._server(server_id, modify=True)
        data = self.body()
        if key is None:
            md = data.get("metadata")
            if not isinstance(md, dict):
                raise bad_input("metadata", md, "'metadata' is a required property")
            self._store(s, dict(md))
            return self.send({"metadata": dict(s["metadata"])})
        meta = data.get("meta")
        if not isinstance(meta, dict) or len(meta) != 1:
            raise bad_input("meta", meta, "'meta' is a required property")
        if key not in meta:
            raise APIError(400, "Request body and URI mismatch")
        self._store(s, dict(s["metadata"]) | meta)
        self.send({"meta": meta})

    def delete(self, server_id, key=None):
        if key is None:
            raise APIError(405, "Method not allowed")
        s = self._server(server_id, modify=True)
        if key not in s["metadata"]:
            raise APIError(404, "Metadata item was not found")
        md = dict(s["metadata"])
        del md[key]
        self._store(s, md)
        self.send(None, status=204)


class ServerActionHandler(NovaHandler):
    async def post(self, server_id):
        s = self.server_or_404(server_id)
        data = self.body()
        if len(data) != 1:
            raise APIError(400, "Malformed request body")
        action, arg = next(iter(data.items()))
        cloud = self.cloud
        if action == "os-getConsoleOutput":
            arg = arg or {}
            length = arg.get("length") if isinstance(arg, dict) else None
            if length is not None:
                try:
                    length = int(length)
                    if length < -1:
                        raise ValueError
                except (TypeError, ValueError):
                    raise bad_input("length", length, f"{length!r} is not of type 'integer'")
            if s["OS-EXT-STS:vm_state"] == "building" or not s.get("_host"):
                raise APIError(409, f"Instance {server_id} is not ready")
            text = cloud.vm_runner.console_log(server_id) if cloud.vm_runner is not None else ""
            text = text or ""
            if length is not None and length >= 0:
                lines = text.splitlines(keepends=True)
                text = "".join(lines[-length:]) if length else ""
            return self.send({"output": text})
        if action == "os-stop":
            self.check_state(s, "stop", ("active", "error"))
            _set_state(s, "SHUTOFF", "stopped", None, 4)
            if cloud.vm_runner is not None:
                await cloud.vm_runner.stop(server_id)
            return self.send(None, status=202)
        if action == "os-start":
            self.check_state(s, "start", ("stopped",))
            _set_state(s, "ACTIVE", "active", None, 1)
            if cloud.vm_runner is not None:
                try:
                    await cloud.vm_runner.boot(s)
                except Exception as e:  # noqa: BLE001
                    _set_state(s, "ERROR", "error", None, 0)
                    s["fault"] = {"code": 500, "message": str(getattr(e, "message", None) or e), "created": now_iso()}
            return self.send(None, status=202)
        if action in ("addSecurityGroup", "removeSecurityGroup"):
            return self._change_security_group(s, action, arg)
        if action == "reboot":
            rtype = (arg or {}).get("type") if isinstance(arg, dict) else None
            if rtype not in ("SOFT", "HARD"):
                raise bad_input("type", rtype, f"{rtype!r} is not one of ['HARD', 'Hard', 'hard', 'SOFT', 'Soft', 'soft']")
            self.check_state(s, "reboot", ("active", "stopped", "error") if rtype == "HARD" else ("active",))
            _set_state(s, "ACTIVE", "active", None, 1)
            return self.send(None, status=202)
        raise APIError(404, f"There is no such action: {action}")

    def _change_security_group(self, s, action, arg):
        """``openstack server add/remove security group``: Nova changes the groups of every port of the server."""
        name = arg.get("name") if isinstance(arg, dict) else None
        if not isinstance(name, str) or not name:
            raise bad_input("name", name, "'name' is a required property")
        pid = s["tenant_id"]
        if name == "default":
            self.cloud.default_security_group(pid)
        sg = next((g for g in self.cloud.security_groups.values()
                   if g["project_id"] == pid and (g["id"] == name or g["name"] == name)), None)
        if sg is None:
            raise APIError(404, f"Security group {name} not found for project {pid}.")
        ports = [p for p in self.cloud.ports.values() if p.get("device_id") == s["id"]]
        if not ports:
            raise APIError(400, "Unable to add security group to the instance: it has no ports")
        if action == "addSecurityGroup":
            for p in ports:
                if sg["id"] not in p["security_groups"]:
                    p["security_groups"].append(sg["id"])
        else:
            if not any(sg["id"] in p["security_groups"] for p in ports):
                raise APIError(400, f"Security group {name} not associated with the instance {s['id']}")
            for p in ports:
                if sg["id"] in p["security_groups"]:
                    p["security_groups"].remove(sg["id"])
        return self.send(None, status=202)


class InterfacesHandler(NovaHandler):
    def _view(self, p):
        out = {"port_state": p["status"], "fixed_ips": [dict(f) for f in p["fixed_ips"]], "port_id": p["id"],
               "net_id": p["network_id"], "mac_addr": p["mac_address"]}
        if self.ver("2.70"):
            out["tag"] = None
        return out

    def get(self, server_id, port_id=None):
        s = self.server_or_404(server_id)
        ports = [p for p in self.cloud.ports.values() if p.get("device_id") == s["id"]]
        if port_id is None:
            return self.send({"interfaceAttachments": [self._view(p) for p in ports]})
        p = next((p for p in ports if p["id"] == port_id), None)
        if p is None:
            raise APIError(404, f"Port {port_id} is not attached")
        self.send({"interfaceAttachment": self._view(p)})


class VolumeAttachmentsHandler(NovaHandler):
    def _view(self, s, bdm):
        out = {"device": bdm["device"], "serverId": s["id"], "volumeId": bdm["volume_id"]}
        if not self.ver("2.89"):
            out["id"] = bdm["volume_id"]
        if self.ver("2.70"):
            out["tag"] = bdm.get("tag")
        if self.ver("2.79"):
            out["delete_on_termination"] = bdm["delete_on_termination"]
        if self.ver("2.89"):
            out["attachment_id"] = bdm["attachment_id"]
            out["bdm_uuid"] = bdm["bdm_uuid"]
        return out

    def _bdm(self, s, volume_id):
        bdm = next((b for b in s["_bdms"] if b["volume_id"] == volume_id), None)
        if bdm is None:
            raise APIError(404, f"No volume Block Device Mapping with id {volume_id}.")
        return bdm

    def get(self, server_id, volume_id=None):
        s = self.server_or_404(server_id)
        if volume_id is not None:
            return self.send({"volumeAttachment": self._view(s, self._bdm(s, volume_id))})
        bdms = s["_bdms"]
        limit = self.int_arg("limit")
        offset = self.int_arg("offset", 0)
        bdms = bdms[offset:offset + limit] if limit is not None else bdms[offset:]
        self.send({"volumeAttachments": [self._view(s, b) for b in bdms]})

    async def post(self, server_id, volume_id=None):
        if volume_id is not None:
            raise APIError(405, "Method not allowed")
        s = self.server_or_404(server_id)
        data = self.nova_body("volumeAttachment")
        vid = data.get("volumeId")
        if not vid:
            raise bad_input("volumeAttachment", data, "'volumeId' is a required property")
        for key, since in (("tag", "2.49"), ("delete_on_termination", "2.79")):
            if key in data and not self.ver(since):
                raise bad_input("volumeAttachment", data,
                                f"Additional properties are not allowed ('{key}' was unexpected)")
        self.check_state(s, "attach_volume", ("active", "paused", "stopped", "resized", "soft_delete",
                                              "shelved", "shelved_offloaded"))
        vol = self.cloud.volumes.get(vid)
        if vol is None or (vol["_project_id"] != s["tenant_id"] and not self.is_admin):
            raise APIError(404, f"Volume {vid} could not be found.")
        if any(b["volume_id"] == vid for b in s["_bdms"]):
            raise APIError(400, f"Invalid volume: volume {vid} already attached")
        if vol["status"] != "available":
            raise APIError(400, f"Invalid volume: Volume {vid} status must be available or downloading to reserve, "
                                f"but the current status is {vol['status']}.")
        dev = data.get("device") or next_device(s)
        if any(b["device"] == dev for b in s["_bdms"]):
            raise APIError(409, f"The supplied device path ({dev}) is in use.")
        bdm = attach_volume(self.cloud, s, vol, dev, data.get("delete_on_termination", False), None, data.get("tag"))
        if self.cloud.vm_runner is not None:  # hot-plug into a running VM (vm/disks.py)
            await self.cloud.vm_runner.attach_volume(s["id"], vid, dev)
        self.send({"volumeAttachment": self._view(s, bdm)})

    def put(self, server_id, volume_id=None):
        if volume_id is None:
            raise APIError(405, "Method not allowed")
        s = self.server_or_404(server_id)
        data = self.nova_body("volumeAttachment")
        new_id_ = data.get("volumeId")
        if not isinstance(new_id_, str) or not new_id_:
            raise bad_input("volumeAttachment", data, "'volumeId' is a required property")
        if volume_id not in self.cloud.volumes:
            raise APIError(404, f"Volume {volume_id} could not be found.")
        if not self.ver("2.85") or new_id_ != volume_id:
            raise APIError(403, "Policy doesn't allow os_compute_api:os-volumes-attachments:swap to be performed.")
        # 2.85: the same volume: an update of the attachment, of which only delete_on_termination may change
        allowed = {"volumeId", "device", "id", "serverId", "tag", "delete_on_termination"}
        extra = sorted(set(data) - allowed)
        if extra:
            raise bad_input("volumeAttachment", data,
                            f"Additional properties are not allowed ('{extra[0]}' was unexpected)")
        bdm = self._bdm(s, volume_id)
        for key, current in (("id", volume_id), ("serverId", s["id"]), ("device", bdm["device"]),
                             ("tag", bdm.get("tag"))):
            if key in data and data[key] != current:
                raise APIError(400, f"The {key} property is not mutable")
        if "delete_on_termination" in data:
            value = data["delete_on_termination"]
            if not isinstance(value, bool):
                raise bad_input("volumeAttachment.delete_on_termination", value, f"{value!r} is not of type 'boolean'")
            bdm["delete_on_termination"] = value
            for v in s["os-extended-volumes:volumes_attached"]:
                if v["id"] == volume_id:
                    v["delete_on_termination"] = value
        self.send(None, status=202)

    async def delete(self, server_id, volume_id=None):
        if volume_id is None:
            raise APIError(405, "Method not allowed")
        s = self.server_or_404(server_id)
        self.check_state(s, "detach_volume", ("active", "paused", "stopped", "resized", "soft_delete",
                                              "shelved", "shelved_offloaded"))
        bdm = self._bdm(s, volume_id)
        if bdm["boot_index"] == 0:
            raise APIError(400, "Cannot detach a root device volume")
        if self.cloud.vm_runner is not None:
            await self.cloud.vm_runner.detach_volume(s["id"], volume_id)
        detach_volume(self.cloud, s, volume_id)
        self.send(None, status=202)


_ExtensionsHandler = nova_extensions.handler_class(NovaHandler)


def routes(cloud):
    a = {"cloud": cloud}
    v = rf"{PREFIX}/v2\.1"
    sid = r"([^/]+)"
    return [
        (rf"{PREFIX}/?", VersionsHandler, a),
        (rf"{v}/?", V21Handler, a),
        (rf"{v}/extensions/?", _ExtensionsHandler, a),
        (rf"{v}/extensions/([^/]+)/?", _ExtensionsHandler, a),
        (rf"{v}/flavors/?()", FlavorsHandler, a),
        (rf"{v}/flavors/(detail)/?", FlavorsHandler, a),
        (rf"{v}/flavors/([^/]+)/os-extra_specs/?", ExtraSpecsHandler, a),
        (rf"{v}/flavors/([^/]+)/os-extra_specs/([^/]+)/?", ExtraSpecsHandler, a),
        (rf"{v}/flavors/([^/]+)/?", FlavorHandler, a),
        (rf"{v}/os-keypairs/?", KeypairsHandler, a),
        (rf"{v}/os-keypairs/([^/]+)/?", KeypairsHandler, a),
        (rf"{v}/limits/?", LimitsHandler, a),
        (rf"{v}/os-quota-sets/([^/]+)/?", QuotaSetsHandler, a),
        (rf"{v}/os-quota-sets/([^/]+)/(detail|defaults)/?", QuotaSetsHandler, a),
        (rf"{v}/os-availability-zone/?", AvailabilityZoneHandler, a),
        (rf"{v}/os-availability-zone/(detail)/?", AvailabilityZoneHandler, a),
        (rf"{v}/servers/?()", ServersHandler, a),
        (rf"{v}/servers/(detail)/?", ServersHandler, a),
        (rf"{v}/servers/{sid}/tags/?", ServerTagsHandler, a),
        (rf"{v}/servers/{sid}/tags/([^/]+)/?", ServerTagsHandler, a),
        (rf"{v}/servers/{sid}/metadata/?", ServerMetadataHandler, a),
        (rf"{v}/servers/{sid}/metadata/([^/]+)/?", ServerMetadataHandler, a),
        (rf"{v}/servers/{sid}/action/?", ServerActionHandler, a),
        (rf"{v}/servers/{sid}/os-interface/?", InterfacesHandler, a),
        (rf"{v}/servers/{sid}/os-interface/([^/]+)/?", InterfacesHandler, a),
        (rf"{v}/servers/{sid}/os-volume_attachments/?", VolumeAttachmentsHandler, a),
        (rf"{v}/servers/{sid}/os-volume_attachments/([^/]+)/?", VolumeAttachmentsHandler, a),
        (rf"{v}/servers/([^/]+)/?", ServerHandler, a),
    ]
