"""Glance v2 under ``/image``: discovery, images (list/show/create/update/delete/upload), tags, schemas."""
import hashlib
import json
import os
import uuid
from urllib.parse import urlencode

from .cloud import new_id, now_iso
from .web import APIError, BaseHandler

PREFIX = "/image"
_VERSIONS = [("v2.16", "CURRENT")] + [(f"v2.{n}", "SUPPORTED") for n in range(15, -1, -1) if n != 14]

# attributes a client may not set, and the ones it may not even name
READ_ONLY = {"id", "status", "created_at", "updated_at", "size", "virtual_size", "checksum", "os_hash_algo",
             "os_hash_value", "file", "self", "schema", "direct_url", "locations", "stores"}
RESERVED = {"deleted", "deleted_at", "location"}
BASE_ATTRS = {"name", "visibility", "protected", "min_disk", "min_ram", "disk_format", "container_format",
              "tags", "os_hidden", "owner"}
DISK_FORMATS = ["ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"]
CONTAINER_FORMATS = ["ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"]


def versions(cloud):
    return {"versions": [{"id": vid, "status": st,
                          "links": [{"rel": "self", "href": f"{cloud.base_url}{PREFIX}/v2/"}]}
                         for vid, st in _VERSIONS]}


class VersionsHandler(BaseHandler):
    service = "image"
    requires_auth = False

    def get(self, path=None):
        self.send(versions(self.cloud), status=200 if path == "versions" else 300)


def image_view(im):
    return {k: v for k, v in im.items() if not k.startswith("_")}


def visible(im, project_id, is_admin):
    vis = im.get("visibility")
    if is_admin or vis in ("public", "community") or im.get("owner") in (None, project_id):
        return True
    return vis == "shared" and project_id in im.get("_members", [])


class GlanceHandler(BaseHandler):
    service = "image"

    def image_or_404(self, image_id):
        im = self.cloud.images.get(image_id)
        if im is None or not visible(im, self.project_id, self.is_admin):
            raise APIError(404, f"No image found with ID {image_id}")
        return im

    def check_owner(self, im, what):
        if not self.is_admin and im.get("owner") != self.project_id:
            raise APIError(403, what)

    def json_body(self):
        if not self.request.body:
            raise APIError(400, "Body expected in request.")
        try:
            return json.loads(self.request.body)
        except ValueError:
            raise APIError(400, "Malformed JSON in request body.")


def _check_attr(name, value):
    if name in ("min_disk", "min_ram"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise APIError(400, f"Provided object does not match schema 'image': {value!r} is not of type "
                                f"'integer'")
    elif name in ("protected", "os_hidden"):
        if not isinstance(value, bool):
            raise APIError(400, f"Provided object does not match schema 'image': {value!r} is not of type "
                                f"'boolean'")
    elif name == "visibility":
        if value not in ("public", "private", "shared", "community"):
            raise APIError(400, f"Invalid visibility value: {value}")
    elif name == "disk_format":
        if value is not None and value not in DISK_FORMATS:
            raise APIError(400, f"Provided object does not match schema 'image': '{value}' is not one of "
                                f"{DISK_FORMATS}")
    elif name == "container_format":
        if value is not None and value not in CONTAINER_FORMATS:
            raise APIError(400, f"Provided object does not match schema 'image': '{value}' is not one of "
                                f"{CONTAINER_FORMATS}")
    elif name == "tags":
        if not isinstance(value, list) or not all(isinstance(t, str) and len(t) <= 255 for t in value):
            raise APIError(400, "Provided object does not match schema 'image': tags must be a list of strings")
    elif name == "name":
        if value is not None and (not isinstance(value, str) or len(value) > 255):
            raise APIError(400, f"Provided object does not match schema 'image': {value!r} is too long")
    elif name not in BASE_ATTRS:
        if not isinstance(value, str):
            raise APIError(400, f"Provided object does not match schema 'image': {value!r} is not of type "
                                f"'string'")


def _sort_keys(handler):
    keys = []
    sort = handler.get_argument("sort", None)
    if sort:
        for part in sort.split(","):
            k, _, d = part.strip().partition(":")
            keys.append((k, d or "desc"))
    else:
        sk = handler.get_arguments("sort_key")
        sd = handler.get_arguments("sort_dir")
        for i, k in enumerate(sk):
            keys.append((k, sd[i] if i < len(sd) else (sd[0] if sd else "desc")))
    if not keys:
        keys = [("created_at", "desc")]
    for k, d in keys:
        if d not in ("asc", "desc"):
            raise APIError(400, f"Invalid sort direction: {d}")
        if k not in ("name", "status", "container_format", "disk_format", "size", "id", "created_at",
                     "updated_at", "min_disk", "min_ram", "visibility", "owner"):
            raise APIError(400, f"Invalid sort key: {k}. It should be one of the following: name, status, "
                                "container_format, disk_format, size, id, created_at, updated_at.")
    if "id" not in [k for k, _ in keys]:
        keys.append(("id", keys[0][1]))
    return keys


def _matches_op(value, spec):
    """``in:a,b`` or plain equality, as Glance's list filters."""
    if spec.startswith("in:"):
        return str(value) in [x.strip('"') for x in spec[3:].split(",")]
    return str(value) == spec


class ImagesHandler(GlanceHandler):
    def get(self):
        c = self.cloud
        pid = self.project_id
        images = [im for im in c.images.values() if visible(im, pid, self.is_admin)]
        args = {k: self.get_argument(k) for k in self.request.query_arguments}
        vis = args.pop("visibility", None)
        if vis is None:
            images = [im for im in images if im["visibility"] != "community" or im.get("owner") == pid]
            images = [im for im in images if im["visibility"] != "shared" or im.get("owner") in (None, pid)
                      or pid in im.get("_members", [])]
        elif vis == "all":
            pass
        elif vis in ("public", "private", "shared", "community"):
            images = [im for im in images if im["visibility"] == vis]
        else:
            raise APIError(400, f"Invalid visibility value: {vis}")
        hidden = args.pop("os_hidden", None)
        if hidden is None or hidden.lower() in ("false", "0", "no"):
            images = [im for im in images if not im.get("os_hidden")]
        elif hidden.lower() not in ("true", "1", "yes"):
            raise APIError(400, f"Invalid value '{hidden}' for 'os_hidden' filter. Valid values are 'true' or "
                                "'false'.")
        else:
            images = [im for im in images if im.get("os_hidden")]
        tags = self.get_arguments("tag")
        args.pop("tag", None)
        if tags:
            images = [im for im in images if set(tags) <= set(im.get("tags", []))]
        for k in ("size_min", "size_max"):
            if k in args:
                try:
                    n = int(args.pop(k))
                except ValueError:
                    raise APIError(400, f"Invalid value for {k}")
                images = [im for im in images if im.get("size") is not None and
                          (im["size"] >= n if k == "size_min" else im["size"] <= n)]
        for k in ("sort", "sort_key", "sort_dir", "limit", "marker", "member_status", "created_at", "updated_at"):
            args.pop(k, None)
        for k, spec in args.items():
            images = [im for im in images if k in im and im[k] is not None and _matches_op(im[k], spec)]
        for k, d in reversed(_sort_keys(self)):
            images.sort(key=lambda im: (im.get(k) is None, im.get(k) if isinstance(im.get(k), (int, float))
                                        else str(im.get(k) or "")), reverse=d == "desc")
        marker = self.get_argument("marker", None)
        if marker is not None:
            idx = next((i for i, im in enumerate(images) if im["id"] == marker), None)
            if idx is None:
                raise APIError(400, f"Invalid marker. Image {marker} could not be found.")
            images = images[idx + 1:]
        limit_raw = self.get_argument("limit", None)
        try:
            limit = 25 if limit_raw is None else int(limit_raw)
            if limit < 0:
                raise ValueError
        except ValueError:
            raise APIError(400, "limit param must be positive" if limit_raw and limit_raw.lstrip("-").isdigit()
                           else "limit param must be an integer")
        limit = min(limit, 1000)
        page = images[:limit]
        query = [(k, v.decode()) for k, vs in self.request.query_arguments.items() if k != "marker" for v in vs]
        body = {"images": [image_view(im) for im in page], "schema": "/v2/schemas/images",
                "first": "/v2/images" + (f"?{urlencode(query)}" if query else "")}
        if page and len(page) == limit and len(images) > limit:
            body["next"] = "/v2/images?" + urlencode(query + [("marker", page[-1]["id"])])
        self.send(body)

    def post(self):
        data = self.json_body()
        if not isinstance(data, dict):
            raise APIError(400, "Malformed JSON in request body.")
        for k in data:
            if k in RESERVED:
                raise APIError(403, f"Attribute '{k}' is reserved.")
            if k in READ_ONLY - {"id"}:
                raise APIError(403, f"Attribute '{k}' is read-only.")
            if k == "owner" and not self.is_admin and data[k] != self.project_id:
                raise APIError(403, "You are not permitted to create images owned by '%s'." % data[k])
        for k, v in data.items():
            if k != "id":
                _check_attr(k, v)
        iid = data.get("id") or new_id()
        try:
            uuid.UUID(str(iid))
        except ValueError:
            raise APIError(400, f"Provided object does not match schema 'image': '{iid}' does not match "
                                "'^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$'")
        if iid in self.cloud.images:
            raise APIError(409, f"Image with identifier {iid} already exists!")
        vis = data.get("visibility", "shared")
        if vis == "public" and not self.is_admin:
            raise APIError(403, 'You are not authorized to complete publicize_image action.')
        t = now_iso()
        im = {"id": iid, "name": data.get("name"), "status": "queued", "visibility": vis,
              "protected": data.get("protected", False), "min_disk": data.get("min_disk", 0),
              "min_ram": data.get("min_ram", 0), "disk_format": data.get("disk_format"),
              "container_format": data.get("container_format"), "size": None, "virtual_size": None,
              "checksum": None, "os_hash_algo": None, "os_hash_value": None, "os_hidden": data.get("os_hidden", False),
              "owner": data.get("owner") or self.project_id, "created_at": t, "updated_at": t,
              "tags": list(data.get("tags", [])), "file": f"/v2/images/{iid}/file", "self": f"/v2/images/{iid}",
              "schema": "/v2/schemas/image", "_members": []}
        for k, v in data.items():
            if k not in im:
                im[k] = v
        self.cloud.images[iid] = im
        self.send(image_view(im), status=201, headers={"Location": f"{self.cloud.base_url}{PREFIX}/v2/images/{iid}"})


class ImageHandler(GlanceHandler):
    def get(self, image_id):
        self.send(image_view(self.image_or_404(image_id)))

    def patch(self, image_id):
        im = self.image_or_404(image_id)
        ctype = (self.request.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype not in ("application/openstack-images-v2.1-json-patch", "application/openstack-images-v2.0-json-patch"):
            raise APIError(415, "Unsupported Content-Type", headers={
                "Accept-Patch": "application/openstack-images-v2.0-json-patch, "
                                "application/openstack-images-v2.1-json-patch"})
        ops = self.json_body()
        if not isinstance(ops, list):
            raise APIError(400, "Request body must be a JSON array of operation objects.")
        new = dict(im)
        for op in ops:
            if not isinstance(op, dict) or op.get("op") not in ("add", "replace", "remove") or "path" not in op:
                raise APIError(400, "Operation objects must contain exactly one member named \"add\", \"remove\", "
                                    "or \"replace\".")
            path = op["path"]
            if not path.startswith("/"):
                raise APIError(400, "Json path should start with a '/', end with no '/', no 2 subsequent '/' "
                                    "are allowed.")
            parts = path[1:].split("/")
            name = parts[0].replace("~1", "/").replace("~0", "~")
            if name in RESERVED:
                raise APIError(403, f"Attribute '{name}' is reserved.")
            if name in READ_ONLY:
                raise APIError(403, f"Attribute '{name}' is read-only.")
            self.check_owner(im, f"You are not permitted to modify '{name}' on this image.")
            if name == "owner" and not self.is_admin:
                raise APIError(403, "You are not permitted to modify 'owner' on this image.")
            if op["op"] == "remove":
                if name in BASE_ATTRS:
                    raise APIError(403, f"Attribute '{name}' is read-only." if name != "tags"
                                   else "Unable to remove tags.")
                if name not in new:
                    raise APIError(409, f"Property {name} does not exist.")
                del new[name]
                continue
            if "value" not in op:
                raise APIError(400, f"Operation \"{op['op']}\" requires a member named \"value\".")
            value = op["value"]
            if name == "tags" and len(parts) > 1:
                if value not in new["tags"]:
                    new["tags"] = new["tags"] + [value]
                continue
            if op["op"] == "replace" and name not in new:
                raise APIError(409, f"Property {name} does not exist.")
            if name == "visibility" and value == "public" and not self.is_admin:
                raise APIError(403, "You are not authorized to complete publicize_image action.")
            _check_attr(name, value)
            new[name] = value
        new["updated_at"] = now_iso()
        im.clear()
        im.update(new)
        self.send(image_view(im))

    def delete(self, image_id):
        im = self.image_or_404(image_id)
        if not self.is_admin and im.get("owner") != self.project_id:
            raise APIError(403, "You are not permitted to delete this image.")
        if im.get("protected"):
            raise APIError(403, f"Image {image_id} is protected and cannot be deleted.")
        self.cloud.images.pop(image_id, None)
        path = _data_path(self.cloud, image_id)
        if path and os.path.exists(path):
            os.unlink(path)
        self.send(None, status=204)


def _data_path(cloud, image_id):
    if not cloud.state_dir:
        return None
    return os.path.join(cloud.state_dir, "images", image_id)


class ImageFileHandler(GlanceHandler):
    def put(self, image_id):
        im = self.image_or_404(image_id)
        self.check_owner(im, "You are not permitted to upload data for this image.")
        if im["status"] != "queued":
            raise APIError(409, f"Image status transition from {im['status']} to saving is not allowed")
        if not im.get("disk_format") or not im.get("container_format"):
            raise APIError(400, "Properties disk_format, container_format must be set prior to saving data.")
        data = self.request.body or b""
        path = _data_path(self.cloud, image_id)
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        im.update({"status": "active", "size": len(data), "checksum": hashlib.md5(data).hexdigest(),
                   "os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest(),
                   "updated_at": now_iso(), "stores": "file"})
        self.send(None, status=204)

    def get(self, image_id):
        im = self.image_or_404(image_id)
        path = _data_path(self.cloud, image_id)
        if im["status"] != "active" or not path or not os.path.exists(path):
            if im["status"] != "active":
                return self.send(None, status=204)
            raise APIError(404, f"Image {image_id} has no data.")
        with open(path, "rb") as f:
            data = f.read()
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-MD5", im["checksum"] or "")
        self.finish(data)


class ImageTagHandler(GlanceHandler):
    def put(self, image_id, tag):
        im = self.image_or_404(image_id)
        self.check_owner(im, "You are not permitted to modify 'tags' on this image.")
        if tag not in im["tags"]:
            im["tags"].append(tag)
            im["updated_at"] = now_iso()
        self.send(None, status=204)

    def delete(self, image_id, tag):
        im = self.image_or_404(image_id)
        self.check_owner(im, "You are not permitted to modify 'tags' on this image.")
        if tag not in im["tags"]:
            raise APIError(404, f"Tag {tag} not found")
        im["tags"].remove(tag)
        im["updated_at"] = now_iso()
        self.send(None, status=204)


def image_schema():
    props = {
        "id": {"type": "string", "description": "An identifier for the image",
               "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
        "name": {"type": ["null", "string"], "description": "Descriptive name for the image", "maxLength": 255},
        "status": {"type": "string", "readOnly": True, "description": "Status of the image",
                   "enum": ["queued", "saving", "active", "killed", "deleted", "uploading", "importing",
                            "pending_delete", "deactivated"]},
        "visibility": {"type": "string", "description": "Scope of image accessibility",
                       "enum": ["community", "public", "private", "shared"]},
        "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
        "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list "
                                                        "response."},
        "checksum": {"type": ["null", "string"], "readOnly": True, "maxLength": 32,
                     "description": "md5 hash of image contents."},
        "os_hash_algo": {"type": ["null", "string"], "readOnly": True, "maxLength": 64,
                         "description": "Algorithm to calculate the os_hash_value"},
        "os_hash_value": {"type": ["null", "string"], "readOnly": True, "maxLength": 128,
                          "description": "Hexdigest of the image contents using the algorithm specified by the "
                                         "os_hash_algo"},
        "owner": {"type": ["null", "string"], "description": "Owner of the image", "maxLength": 255},
        "size": {"type": ["null", "integer"], "readOnly": True, "description": "Size of image file in bytes"},
        "virtual_size": {"type": ["null", "integer"], "readOnly": True, "description": "Virtual size of image in "
                                                                                        "bytes"},
        "container_format": {"type": ["null", "string"], "description": "Format of the container",
                             "enum": [None] + CONTAINER_FORMATS},
        "disk_format": {"type": ["null", "string"], "description": "Format of the disk",
                        "enum": [None] + DISK_FORMATS},
        "created_at": {"type": "string", "readOnly": True, "description": "Date and time of image registration"},
        "updated_at": {"type": "string", "readOnly": True, "description": "Date and time of the last image "
                                                                          "modification"},
        "tags": {"type": "array", "description": "List of strings related to the image",
                 "items": {"type": "string", "maxLength": 255}},
        "direct_url": {"type": "string", "readOnly": True, "description": "URL to access the image file kept in "
                                                                          "external store"},
        "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot image."},
        "min_disk": {"type": "integer", "description": "Amount of disk space (in GB) required to boot image."},
        "self": {"type": "string", "readOnly": True, "description": "An image self url"},
        "file": {"type": "string", "readOnly": True, "description": "An image file url"},
        "stores": {"type": "string", "readOnly": True, "description": "Store in which image data resides."},
        "schema": {"type": "string", "readOnly": True, "description": "An image schema url"},
        "locations": {"type": "array", "description": "A set of URLs to access the image file kept in external "
                                                      "store", "items": {"type": "object"}},
        "os_distro": {"type": "string", "description": "Common name of operating system distribution"},
        "os_version": {"type": "string", "description": "Operating system version as specified by the "
                                                        "distributor"},
        "architecture": {"type": "string", "description": "Operating system architecture"},
        "kernel_id": {"type": ["null", "string"], "description": "ID of image stored in Glance that should be used "
                                                                 "as the kernel when booting an AMI-style image."},
        "ramdisk_id": {"type": ["null", "string"], "description": "ID of image stored in Glance that should be "
                                                                  "used as the ramdisk when booting an AMI-style "
                                                                  "image."},
        "instance_uuid": {"type": "string", "description": "Metadata which can be used to record which instance "
                                                           "this image is associated with."},
    }
    return {"name": "image", "properties": props, "additionalProperties": {"type": "string"},
            "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
                      {"rel": "describedby", "href": "{schema}"}]}


class SchemaHandler(GlanceHandler):
    def get(self, which):
        if which == "image":
            return self.send(image_schema())
        if which == "images":
            return self.send({"name": "images", "properties": {
                "images": {"type": "array", "items": image_schema()},
                "schema": {"type": "string"}, "first": {"type": "string"}, "next": {"type": "string"}},
                "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                          {"rel": "describedby", "href": "{schema}"}]})
        raise APIError(404, "The resource could not be found.")


class InfoHandler(GlanceHandler):
    def get(self, which):
        if which == "import":
            return self.send({"import-methods": {"description": "Import methods available.", "type": "array",
                                                 "value": ["glance-direct"]}})
        if which == "stores":
            return self.send({"stores": [{"id": "file", "description": "Local file store", "default": True}]})
        raise APIError(404, "The resource could not be found.")


def routes(cloud):
    a = {"cloud": cloud}
    p = PREFIX
    return [
        (rf"{p}/?()", VersionsHandler, a),
        (rf"{p}/(versions)/?", VersionsHandler, a),
        (rf"{p}/v2/?()", VersionsHandler, a),
        (rf"{p}/v2/images/?", ImagesHandler, a),
        (rf"{p}/v2/images/([^/]+)/?", ImageHandler, a),
        (rf"{p}/v2/images/([^/]+)/file/?", ImageFileHandler, a),
        (rf"{p}/v2/images/([^/]+)/tags/([^/]+)/?", ImageTagHandler, a),
        (rf"{p}/v2/schemas/(image|images)/?", SchemaHandler, a),
        (rf"{p}/v2/info/(import|stores)/?", InfoHandler, a),
    ]
