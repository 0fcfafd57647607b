"""Cinder v3 under ``/volume``: volumes, metadata, limits, quota sets, types and
availability zones, in Cinder's own shapes and error messages.

The catalog URL is ``/volume/v3/{project_id}``; microversions 3.0 to 3.70 are
negotiated with ``OpenStack-API-Version: volume 3.x``.
"""
import ast
import copy
import json
import re
import time
import uuid

from tornado.ioloop import IOLoop

from .cloud import new_id
from .web import APIError, BaseHandler

PREFIX = "/volume"
MIN_VERSION = (3, 0)
MAX_VERSION = (3, 70)
DEFAULT_TYPE_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "jhub-broker-local-cloud/volume-type/__DEFAULT__"))
AZ = "nova"
DELETABLE = ("available", "error", "error_restoring", "error_extending", "error_managing")
IN_USE_MESSAGE = ("Invalid volume: Volume status must be available or error or error_restoring or error_extending "
                  "or error_managing and must not be migrating, attached, belong to a group, have snapshots, "
                  "awaiting a transfer, or be disassociated from snapshots after volume transfer.")
CINDER_QUOTAS = ["volumes", "gigabytes", "snapshots", "backups", "backup_gigabytes", "per_volume_gigabytes",
                 "groups"]
QUOTA_DEFAULTS = {"snapshots": 10, "backups": 10, "backup_gigabytes": 1000, "per_volume_gigabytes": -1,
                  "groups": 10}


def cinder_time(ts=None):
    ts = ts if ts is not None else time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%06d" % int((ts % 1) * 1e6)


def version_doc(cloud):
    return {"id": "v3.0", "status": "CURRENT", "version": "%d.%d" % MAX_VERSION,
            "min_version": "%d.%d" % MIN_VERSION, "updated": "2023-08-31T00:00:00Z",
            "links": [{"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
                      {"rel": "self", "href": f"{cloud.base_url}{PREFIX}/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.volume+json;version=3"}]}


def default_type():
    return {"id": DEFAULT_TYPE_ID, "name": "__DEFAULT__", "description": "Default Volume Type",
            "is_public": True, "extra_specs": {}, "os-volume-type-access:is_public": True, "qos_specs_id": None}


def quota_limit(cloud, name):
    if name in cloud.config["quotas"]:
        return cloud.quota(name)
    return QUOTA_DEFAULTS.get(name, -1)


class CinderHandler(BaseHandler):
    service = "volume"
    microversion = (3, 0)

    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("OpenStack-API-Version", "volume %d.%d" % self.microversion)
        self.set_header("Vary", "OpenStack-API-Version")

    async def prepare(self):
        header = self.request.headers.get("OpenStack-API-Version", "")
        requested = None
        for part in header.split(","):
            words = part.strip().split()
            if len(words) == 2 and words[0].lower() == "volume":
                requested = words[1]
        if requested is None:
            legacy = self.request.headers.get("X-OpenStack-Volume-API-Version")
            requested = legacy.strip() if legacy else None
        if requested:
            if requested.lower() == "latest":
                self.microversion = MAX_VERSION
            else:
                m = re.match(r"^([1-9]\d*)\.([1-9]\d*|0)$", requested)
                if not m:
                    raise APIError(400, f"API Version String {requested} is of invalid format. Must be of format "
                                        f"MajorNum.MinorNum.")
                version = (int(m.group(1)), int(m.group(2)))
                if not MIN_VERSION <= version <= MAX_VERSION:
                    raise APIError(406, f"Version {requested} is not supported by the API. Minimum is "
                                        f"%d.%d and maximum is %d.%d." % (MIN_VERSION + MAX_VERSION))
                self.microversion = version
            self.set_header("OpenStack-API-Version", "volume %d.%d" % self.microversion)
        await super().prepare()

    def at_least(self, version):
        return self.microversion >= tuple(int(x) for x in version.split("."))

    def check_project(self, project_id):
        if project_id != self.project_id:
            raise APIError(400, f"Malformed request URL: URL's project_id '{project_id}' doesn't match Context's "
                                f"project_id '{self.project_id}'")

    def find_volume(self, volume_id):
        vol = self.cloud.volumes.get(volume_id)
        if vol is None or not (self.is_admin or vol["_project_id"] == self.project_id):
            raise APIError(404, f"Volume {volume_id} could not be found.")
        return vol

    def schema_error(self, field, value, reason):
        return APIError(400, f"Invalid input for field/attribute {field}. Value: {value}. {reason}")

    def volume_links(self, vol):
        pid = vol["_project_id"]
        return [{"href": f"{self.cloud.base_url}{PREFIX}/v3/{pid}/volumes/{vol['id']}", "rel": "self"},
                {"href": f"{self.cloud.base_url}{PREFIX}/{pid}/volumes/{vol['id']}", "rel": "bookmark"}]

    def volume_view(self, vol, detail=True):
        if not detail:
            return {"id": vol["id"], "name": vol["name"], "links": self.volume_links(vol)}
        out = {k: copy.deepcopy(v) for k, v in vol.items() if not k.startswith("_")}
        if out["status"] in ("available", "in-use"):
            out["status"] = "in-use" if out.get("attachments") else "available"
        out["links"] = self.volume_links(vol)
        gated = {"group_id": "3.13", "provider_id": "3.21", "service_uuid": "3.48", "shared_targets": "3.48",
                 "cluster_name": "3.61", "volume_type_id": "3.63", "consumes_quota": "3.65"}
        for key, version in gated.items():
            if not self.at_least(version):
                out.pop(key, None)
        if not self.is_admin:
            for key in ("os-vol-tenant-attr:tenant_id", "os-vol-host-attr:host", "os-vol-mig-status-attr:migstat",
                        "os-vol-mig-status-attr:name_id", "migration_status", "provider_id", "cluster_name"):
                out.pop(key, None)
        return out


class VersionsHandler(CinderHandler):
    requires_auth = False

    def get(self):
        self.send({"versions": [version_doc(self.cloud)]}, status=300)


class V3Handler(CinderHandler):
    requires_auth = False

    def get(self, project_id=None):
        self.send({"versions": [version_doc(self.cloud)]})


class VolumesHandler(CinderHandler):
    def _filtered(self):
        cloud = self.cloud
        args = {k: self.get_argument(k) for k in self.request.query_arguments}
        all_tenants = self.is_admin and args.get("all_tenants", "0").lower() in ("1", "true", "yes")
        vols = [v for v in cloud.volumes.values()
                if (all_tenants and not args.get("project_id")) or v["_project_id"] == (
                    args.get("project_id") if self.is_admin and args.get("project_id") else self.project_id)]
        if "name" in args or "display_name" in args:
            name = args.get("name", args.get("display_name"))
            vols = [v for v in vols if v["name"] == name]
        if "name~" in args:
            vols = [v for v in vols if args["name~"] in (v["name"] or "")]
        if "status" in args:
            vols = [v for v in vols if self.volume_view(v)["status"] == args["status"]]
        if "bootable" in args:
            want = "true" if args["bootable"].lower() in ("1", "true", "yes") else "false"
            vols = [v for v in vols if v["bootable"] == want]
        if "availability_zone" in args:
            vols = [v for v in vols if v["availability_zone"] == args["availability_zone"]]
        if "metadata" in args:
            raw = args["metadata"]
            try:
                meta = json.loads(raw)
            except ValueError:
                try:
                    meta = ast.literal_eval(raw)
                except (ValueError, SyntaxError):
                    raise APIError(400, f"Invalid input received: Invalid metadata filter {raw}.")
            if not isinstance(meta, dict):
                raise APIError(400, f"Invalid input received: Invalid metadata filter {raw}.")
            vols = [v for v in vols if all(v["metadata"].get(k) == str(val) for k, val in meta.items())]
        sort = args.get("sort") or args.get("sort_key") or "created_at"
        reverse = True
        key = sort.split(",")[0]
        if ":" in key:
            key, direction = key.split(":", 1)
            reverse = direction != "asc"
        elif args.get("sort_dir"):
            reverse = args["sort_dir"] != "asc"
        vols.sort(key=lambda v: (str(v.get(key)), v.get("_seq", 0)), reverse=reverse)
        total = len(vols)
        marker = args.get("marker")
        if marker:
            idx = next((i for i, v in enumerate(vols) if v["id"] == marker), None)
            if idx is None:
                raise APIError(400, f"marker [{marker}] not found")
            vols = vols[idx + 1:]
        links = None
        if args.get("limit"):
            try:
                limit = int(args["limit"])
            except ValueError:
                raise APIError(400, "limit param must be an integer")
            if limit < 0:
                raise APIError(400, "limit param must be positive")
            if len(vols) > limit:
                vols = vols[:limit]
                q = "&".join(f"{k}={v}" for k, v in args.items() if k != "marker")
                base = f"{self.cloud.base_url}{PREFIX}/v3/{self.project_id}/volumes"
                links = [{"rel": "next", "href": f"{base}?{q}&marker={vols[-1]['id']}"}] if vols else None
        return vols, links, total

    def get(self, project_id, detail=None):
        self.check_project(project_id)
        if detail == "summary":
            vols = [v for v in self.cloud.volumes.values() if v["_project_id"] == self.project_id]
            meta = {}
            for v in vols:
                for k, val in v["metadata"].items():
                    meta.setdefault(k, [])
                    if val not in meta[k]:
                        meta[k].append(val)
            body = {"total_size": sum(v["size"] for v in vols), "total_count": len(vols)}
            if self.at_least("3.36"):
                body["metadata"] = meta
            return self.send({"volume-summary": body})
        vols, links, total = self._filtered()
        body = {"volumes": [self.volume_view(v, detail=bool(detail)) for v in vols]}
        if links:
            body["volumes_links"] = links
        if self.at_least("3.45") and self.get_argument("with_count", "false").lower() in ("1", "true", "yes"):
            body["count"] = total
        self.send(body)

    def post(self, project_id, detail=None):
        self.check_project(project_id)
        if detail:
            raise APIError(405, "Method not allowed")
        cloud = self.cloud
        data = self.body()
        if "volume" not in data or not isinstance(data["volume"], dict):
            raise APIError(400, f"Invalid input for field/attribute volume. Value: {data.get('volume')}. "
                                f"'volume' is a required property" if "volume" not in data else
                           f"Invalid input for field/attribute volume. Value: {data['volume']}. "
                           f"{data['volume']!r} is not of type 'object'")
        req = data["volume"]
        name = req.get("name", req.get("display_name"))
        description = req.get("description", req.get("display_description"))
        if name is not None and (not isinstance(name, str) or len(name) > 255):
            raise self.schema_error("name", name, f"{name!r} is too long" if isinstance(name, str)
                                    else f"{name!r} is not of type 'string', 'null'")
        if description is not None and not isinstance(description, str):
            raise self.schema_error("description", description, f"{description!r} is not of type 'string', 'null'")
        metadata = req.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise self.schema_error("metadata", metadata, "metadata values must be strings")
        for key in ("snapshot_id", "backup_id"):
            if req.get(key):
                what = "Snapshot" if key == "snapshot_id" else "Backup"
                raise APIError(404, f"{what} {req[key]} could not be found.")
        source = None
        if req.get("source_volid"):
            source = self.find_volume(req["source_volid"])
        size = req.get("size")
        if size is None and source is not None:
            size = source["size"]
        if size is None:
            raise self.schema_error("volume", json.dumps(req), "'size' is a required property")
        if isinstance(size, bool) or not (isinstance(size, int) or (isinstance(size, str) and size.isdigit())):
            raise self.schema_error("size", size, f"{size!r} does not match '^[0-9]+$'")
        size = int(size)
        if size < 1:
            raise self.schema_error("size", size, f"{size} is less than the minimum of 1")
        if source is not None and size < source["size"]:
            raise APIError(400, f"Invalid input received: Volume size '{size}' must be an integer and greater "
                                f"than 0")
        vtype = req.get("volume_type")
        if vtype not in (None, "", "__DEFAULT__", DEFAULT_TYPE_ID):
            if re.match(r"^[0-9a-f-]{36}$", str(vtype)):
                raise APIError(404, f"Volume type {vtype} could not be found.")
            raise APIError(404, f"Volume type with name {vtype} could not be found.")
        az = req.get("availability_zone")
        if az not in (None, "", AZ):
            raise APIError(400, f"Availability zone '{az}' is invalid.")
        image = None
        image_ref = req.get("imageRef")
        if image_ref:
            image = cloud.images.get(image_ref)
            if image is None or image.get("status") != "active":
                raise APIError(400, "Invalid input received: Invalid image identifier or unable to access "
                                    "requested image.")
            image_gb = -(-int(image.get("size") or 0) // (1024 ** 3))
            if image_gb > size:
                raise APIError(400, f"Invalid input received: Size of specified image {image_gb}GB is larger "
                                    f"than volume size {size}GB.")
            if int(image.get("min_disk") or 0) > size:
                raise APIError(400, f"Invalid input received: Volume size {size}GB cannot be smaller than the "
                                    f"image minDisk size {image['min_disk']}GB.")
        pid = self.project_id
        check_volume_quota(cloud, pid, 1, size)
        vid = new_id()
        t = cinder_time()
        vol = {"id": vid, "name": name, "status": "creating", "size": size, "availability_zone": AZ,
               "created_at": t, "updated_at": None, "attachments": [], "description": description,
               "volume_type": "__DEFAULT__", "volume_type_id": DEFAULT_TYPE_ID, "snapshot_id": None,
               "source_volid": source["id"] if source else None, "metadata": dict(metadata),
               "user_id": self.token["user"]["id"], "bootable": "true" if image else "false", "encrypted": False,
               "replication_status": None, "consistencygroup_id": None, "multiattach": bool(req.get("multiattach")),
               "group_id": None, "provider_id": None, "service_uuid": None, "shared_targets": False,
               "cluster_name": None, "consumes_quota": True, "migration_status": None,
               "os-vol-tenant-attr:tenant_id": pid, "os-vol-host-attr:host": "local@lvm#lvm",
               "os-vol-mig-status-attr:migstat": None, "os-vol-mig-status-attr:name_id": None,
               "_project_id": pid, "_seq": time.monotonic()}
        if image is not None:
            vol["volume_image_metadata"] = {
                "image_id": image["id"], "image_name": image["name"], "checksum": image.get("checksum"),
                "container_format": image.get("container_format"), "disk_format": image.get("disk_format"),
                "min_disk": str(image.get("min_disk", 0)), "min_ram": str(image.get("min_ram", 0)),
                "size": str(image.get("size", 0))}
            for k, v in image.items():
                if k not in vol["volume_image_metadata"] and isinstance(v, str) and k not in (
                        "id", "name", "status", "visibility", "file", "self", "schema", "created_at", "updated_at",
                        "owner"):
                    vol["volume_image_metadata"][k] = v
        cloud.volumes[vid] = vol
        if cloud.vm_runner is not None:
            cloud.vm_runner.volume_path(vid)
        delay = float(cloud.config.get("volume_create_delay", 0.2))

        def ready():
            v = cloud.volumes.get(vid)
            if v is not None and v["status"] == "creating":
                v["status"] = "in-use" if v["attachments"] else "available"
                v["updated_at"] = cinder_time()
        if delay > 0:
            IOLoop.current().call_later(delay, ready)
        else:
            ready()
        self.send({"volume": self.volume_view(vol)}, status=202)


def check_volume_quota(cloud, project_id, count, gigabytes):
    usage = cloud.usage(project_id)
    limit = cloud.quota("volumes")
    if count and limit >= 0 and usage["volumes"] + count > limit:
        raise APIError(413, f"VolumeLimitExceeded: Maximum number of volumes allowed ({limit}) exceeded for "
                            f"quota 'volumes'.")
    glimit = cloud.quota("gigabytes")
    if gigabytes and glimit >= 0 and usage["gigabytes"] + gigabytes > glimit:
        raise APIError(413, f"VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
                            f"gigabytes quota. Requested {gigabytes}G, quota is {glimit}G and "
                            f"{usage['gigabytes']}G has been consumed.")
    per_volume = quota_limit(cloud, "per_volume_gigabytes")
    if gigabytes and per_volume >= 0 and gigabytes > per_volume:
        raise APIError(413, f"VolumeSizeExceedsLimit: Requested volume size {gigabytes}G is larger than maximum "
                            f"allowed limit {per_volume}G.")


class VolumeHandler(CinderHandler):
    def get(self, project_id, volume_id):
        self.check_project(project_id)
        self.send({"volume": self.volume_view(self.find_volume(volume_id))})

    def put(self, project_id, volume_id):
        self.check_project(project_id)
        vol = self.find_volume(volume_id)
        data = self.body()
        req = data.get("volume")
        if not isinstance(req, dict):
            raise APIError(400, "Missing required element 'volume' in request body.")
        if not req:
            raise APIError(400, f"Invalid input for field/attribute volume. Value: {req}. {req} does not have "
                                f"enough properties")
        for src, dst in (("name", "name"), ("display_name", "name"), ("description", "description"),
                         ("display_description", "description")):
            if src in req:
                if req[src] is not None and not isinstance(req[src], str):
                    raise self.schema_error(src, req[src], f"{req[src]!r} is not of type 'string', 'null'")
                vol[dst] = req[src]
        if "metadata" in req:
            if not isinstance(req["metadata"], dict):
                raise self.schema_error("metadata", req["metadata"], "metadata must be an object")
            vol["metadata"] = {str(k): str(v) for k, v in req["metadata"].items()}
        vol["updated_at"] = cinder_time()
        self.send({"volume": self.volume_view(vol)})

    def delete(self, project_id, volume_id):
        self.check_project(project_id)
        cloud = self.cloud
        vol = self.find_volume(volume_id)
        status = self.volume_view(vol)["status"]
        if status not in DELETABLE or vol.get("attachments"):
            raise APIError(400, IN_USE_MESSAGE)
        vol["status"] = "deleting"
        vol["updated_at"] = cinder_time()
        delay = float(cloud.config.get("delete_delay", 0.2))

        def gone():
            v = cloud.volumes.get(volume_id)
            if v is not None and v["status"] == "deleting":
                del cloud.volumes[volume_id]
        if delay > 0:
            IOLoop.current().call_later(delay, gone)
        else:
            gone()
        self.send(None, status=202)


class VolumeActionHandler(CinderHandler):
    def post(self, project_id, volume_id):
        self.check_project(project_id)
        vol = self.find_volume(volume_id)
        data = self.body()
        if len(data) != 1:
            raise APIError(400, "Malformed request body")
        action, args = next(iter(data.items()))
        args = args or {}
        status = self.volume_view(vol)["status"]
        if action == "os-extend":
            try:
                new_size = int(args.get("new_size"))
            except (TypeError, ValueError):
                raise self.schema_error("os-extend/new_size", args.get("new_size"), "new_size must be an integer")
            allowed = ("available", "in-use") if self.at_least("3.42") else ("available",)
            if status not in allowed:
                raise APIError(400, f"Invalid volume: Volume status must be '{' or '.join(allowed)}' to extend, "
                                    f"currently {status}.")
            if new_size <= vol["size"]:
                raise APIError(400, f"Invalid input received: New size for extend must be greater than current "
                                    f"size. (current: {vol['size']}, extended: {new_size}).")
            check_volume_quota(self.cloud, vol["_project_id"], 0, new_size - vol["size"])
            vol["size"] = new_size
            vol["updated_at"] = cinder_time()
            return self.send(None, status=202)
        if action == "os-set_bootable":
            value = args.get("bootable")
            if isinstance(value, str):
                value = value.lower() in ("1", "true", "yes", "on")
            vol["bootable"] = "true" if value else "false"
            return self.send(None, status=200)
        if action == "os-update_readonly_flag":
            vol["metadata"]["readonly"] = "True" if args.get("readonly") else "False"
            return self.send(None, status=202)
        if action == "os-reset_status":
            if not self.is_admin:
                raise APIError(403, "Policy doesn't allow volume_extension:volume_admin_actions:reset_status to "
                                    "be performed.")
            if args.get("status"):
                vol["status"] = args["status"]
            return self.send(None, status=202)
        raise APIError(400, f"There is no such action: {action}")


class MetadataHandler(CinderHandler):
    def _meta_body(self, key="metadata"):
        data = self.body()
        meta = data.get(key)
        if not isinstance(meta, dict):
            raise APIError(400, "Malformed request body")
        return {str(k): str(v) for k, v in meta.items()}

    def get(self, project_id, volume_id, key=None):
        self.check_project(project_id)
        vol = self.find_volume(volume_id)
        if key is None:
            return self.send({"metadata": dict(vol["metadata"])})
        if key not in vol["metadata"]:
            raise APIError(404, f"Volume {volume_id} has no metadata with key {key}.")
        self.send({"meta": {key: vol["metadata"][key]}})

    def post(self, project_id, volume_id, key=None):
        self.check_project(project_id)
        vol = self.find_volume(volume_id)
        if key is not None:
            raise APIError(405, "Method not allowed")
        vol["metadata"].update(self._meta_body())
        self.send({"metadata": dict(vol["metadata"])})

    def put(self, project_id, volume_id, key=None):
        self.check_project(project_id)
        vol = self.find_volume(volume_id)
        if key is None:
            vol["metadata"] = self._meta_body()
            return self.send({"metadata": dict(vol["metadata"])})
        meta = self._meta_body("meta")
        if key not in meta:
            raise APIError(400, "Request body and URI mismatch")
        if len(meta) > 1:
            raise APIError(400, "Request body contains too many items")
        vol["metadata"][key] = meta[key]
        self.send({"meta": {key: meta[key]}})

    def delete(self, project_id, volume_id, key=None):
        self.check_project(project_id)
        vol = self.find_volume(volume_id)
        if key is None:
            raise APIError(405, "Method not allowed")
        if key not in vol["metadata"]:
            raise APIError(404, f"Volume {volume_id} has no metadata with key {key}.")
        del vol["metadata"][key]
        self.send(None, status=200)


class LimitsHandler(CinderHandler):
    def get(self, project_id):
        self.check_project(project_id)
        cloud = self.cloud
        usage = cloud.usage(self.project_id)
        self.send({"limits": {"rate": [], "absolute": {
            "totalSnapshotsUsed": usage.get("snapshots", 0), "maxTotalBackups": quota_limit(cloud, "backups"),
            "maxTotalVolumeGigabytes": cloud.quota("gigabytes"), "maxTotalSnapshots": quota_limit(cloud, "snapshots"),
            "maxTotalBackupGigabytes": quota_limit(cloud, "backup_gigabytes"), "totalBackupGigabytesUsed": 0,
            "maxTotalVolumes": cloud.quota("volumes"), "totalVolumesUsed": usage["volumes"],
            "totalBackupsUsed": 0, "totalGigabytesUsed": usage["gigabytes"]}}})


class QuotaSetsHandler(CinderHandler):
    def _quota_set(self, target, usage=False, defaults=False):
        cloud = self.cloud
        used = cloud.usage(target)
        out = {"id": target}
        for name in CINDER_QUOTAS + ["volumes___DEFAULT__", "gigabytes___DEFAULT__", "snapshots___DEFAULT__"]:
            limit = quota_limit(cloud, name)
            if usage and not defaults:
                in_use = used.get(name, 0) if name in ("volumes", "gigabytes", "snapshots") else 0
                if name == "volumes___DEFAULT__":
                    in_use = used["volumes"]
                elif name == "gigabytes___DEFAULT__":
                    in_use = used["gigabytes"]
                out[name] = {"limit": limit, "in_use": in_use, "reserved": 0, "allocated": 0}
            else:
                out[name] = limit
        return out

    def _target(self, target):
        if target != self.project_id and not self.is_admin:
            raise APIError(403, "Policy doesn't allow volume_extension:quotas:show to be performed.")
        return target

    def get(self, project_id, target, defaults=None):
        self.check_project(project_id)
        self._target(target)
        usage = self.get_argument("usage", "false").lower() in ("1", "true", "yes")
        self.send({"quota_set": self._quota_set(target, usage=usage, defaults=bool(defaults))})

    def put(self, project_id, target, defaults=None):
        self.check_project(project_id)
        if defaults:
            raise APIError(405, "Method not allowed")
        if not self.is_admin:
            raise APIError(403, "Policy doesn't allow volume_extension:quotas:update to be performed.")
        data = self.body().get("quota_set")
        if not isinstance(data, dict):
            raise APIError(400, "Missing required element 'quota_set' in request body.")
        for k, v in data.items():
            if k in ("tenant_id", "id"):
                continue
            if k not in CINDER_QUOTAS:
                raise APIError(400, f"Bad key(s) in quota set: {k}")
            try:
                v = int(v)
            except (TypeError, ValueError):
                raise APIError(400, f"Invalid input received: Quota limit {v} for {k} must be an integer.")
            if v < -1:
                raise APIError(400, f"Invalid input received: Quota limit {v} for {k} must be greater than or "
                                    f"equal to -1.")
            # the local cloud's quotas apply to every project alike
            self.cloud.config.data["quotas"][k] = v
        qs = self._quota_set(target)
        qs.pop("id")
        self.send({"quota_set": qs})


class TypesHandler(CinderHandler):
    def get(self, project_id, type_id=None):
        self.check_project(project_id)
        if type_id is None:
            return self.send({"volume_types": [default_type()]})
        if type_id in ("default", DEFAULT_TYPE_ID, "__DEFAULT__"):
            return self.send({"volume_type": default_type()})
        raise APIError(404, f"Volume type {type_id} could not be found.")


class AvailabilityZoneHandler(CinderHandler):
    def get(self, project_id):
        self.check_project(project_id)
        self.send({"availabilityZoneInfo": [{"zoneName": AZ, "zoneState": {"available": True}}]})


class EmptyListHandler(CinderHandler):
    """Snapshots and backups: this cloud has none."""

    def initialize(self, cloud, key):
        self.cloud = cloud
        self.key = key

    def get(self, project_id, detail=None):
        self.check_project(project_id)
        self.send({self.key: []})


class ExtensionsHandler(CinderHandler):
    def get(self, project_id):
        self.check_project(project_id)
        self.send({"extensions": []})


def routes(cloud):
    a = {"cloud": cloud}
    v = rf"{PREFIX}/v3/([^/]+)"
    return [
        (rf"{PREFIX}/?", VersionsHandler, a),
        (rf"{PREFIX}/v3/?", V3Handler, a),
        (rf"{v}/volumes/?", VolumesHandler, a),
        (rf"{v}/volumes/(detail|summary)/?", VolumesHandler, a),
        (rf"{v}/volumes/([^/]+)/action/?", VolumeActionHandler, a),
        (rf"{v}/volumes/([^/]+)/metadata/?", MetadataHandler, a),
        (rf"{v}/volumes/([^/]+)/metadata/([^/]+)/?", MetadataHandler, a),
        (rf"{v}/volumes/([^/]+)/?", VolumeHandler, a),
        (rf"{v}/limits/?", LimitsHandler, a),
        (rf"{v}/os-quota-sets/([^/]+)/?", QuotaSetsHandler, a),
        (rf"{v}/os-quota-sets/([^/]+)/(defaults)/?", QuotaSetsHandler, a),
        (rf"{v}/types/?", TypesHandler, a),
        (rf"{v}/types/([^/]+)/?", TypesHandler, a),
        (rf"{v}/os-availability-zone/?", AvailabilityZoneHandler, a),
        (rf"{v}/snapshots/?", EmptyListHandler, {"cloud": cloud, "key": "snapshots"}),
        (rf"{v}/snapshots/(detail)/?", EmptyListHandler, {"cloud": cloud, "key": "snapshots"}),
        (rf"{v}/backups/?", EmptyListHandler, {"cloud": cloud, "key": "backups"}),
        (rf"{v}/backups/(detail)/?", EmptyListHandler, {"cloud": cloud, "key": "backups"}),
        (rf"{v}/extensions/?", ExtensionsHandler, a),
        (rf"{v}/?", V3Handler, a),
    ]
