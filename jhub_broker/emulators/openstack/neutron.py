"""Neutron v2.0 under ``/network``: networks, subnets, ports, security groups,
floating IPs, routers, tags, quotas and extensions, in Neutron's own shapes.

All subnets of the local cloud lie inside 127.0.0.0/8: a fixed IP is a
loopback address the host reaches, and a floating IP is a loopback address
the VM runner forwards to a fixed one.

Besides the HTTP handlers this module offers helpers other services may use
(``create_port``, ``delete_port``, ``disassociate_floating_ips``); they raise
``APIError`` in Neutron's format when the request is invalid.
"""
import copy
import ipaddress
import logging
import random
import re
import urllib.parse

from .cloud import new_id, now_iso
from .web import APIError, BaseHandler

log = logging.getLogger("jhub_broker.cloud.neutron")

PREFIX = "/network"
V2 = PREFIX + "/v2.0"
LOCAL_RANGE = ipaddress.ip_network("127.0.0.0/8")

# collection in the URL -> singular body key, cloud attribute, not-found type and message, quota name
KINDS = {
    "networks": ("network", "networks", "NetworkNotFound", "Network {} could not be found.", "network"),
    "subnets": ("subnet", "subnets", "SubnetNotFound", "Subnet {} could not be found.", "subnet"),
    "ports": ("port", "ports", "PortNotFound", "Port {} could not be found.", "port"),
    "routers": ("router", "routers", "RouterNotFound", "Router {} could not be found", "router"),
    "security-groups": ("security_group", "security_groups", "SecurityGroupNotFound",
                        "Security group {} does not exist", "security_group"),
    "security-group-rules": ("security_group_rule", "security_group_rules", "SecurityGroupRuleNotFound",
                             "Security group rule {} does not exist", "security_group_rule"),
    "floatingips": ("floatingip", "floating_ips", "FloatingIPNotFound", "Floating IP {} could not be found",
                    "floatingip"),
}
COLLECTION_KEYS = {"networks": "networks", "subnets": "subnets", "ports": "ports", "routers": "routers",
                   "security-groups": "security_groups", "security-group-rules": "security_group_rules",
                   "floatingips": "floatingips"}
TAGGABLE = ("networks", "subnets", "ports", "routers", "security-groups", "floatingips")

EXTENSIONS = [
    ("address-scope", "Address scope", "Address scopes extension."),
    ("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"),
    ("availability_zone", "Availability Zone", "The availability zone extension."),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    ("extra_dhcp_opt", "Neutron Extra DHCP options", "Extra options configuration for DHCP."),
    ("extraroute", "Neutron Extra Route", "Extra routes configuration for L3 router"),
    ("ext-gw-mode", "Neutron L3 Configurable external gateway mode",
     "Extension of the router abstraction for specifying whether SNAT should occur on the external gateway"),
    ("fip-port-details", "Floating IP Port Details Extension", "Add port_details attribute to Floating IP resource"),
    ("filter-validation", "Filter parameters validation", "Provides validation on filter parameters."),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("network_availability_zone", "Network Availability Zone", "Availability zone support for network."),
    ("pagination", "Pagination support", "Extension that indicates that pagination is enabled."),
    ("port-security", "Port Security", "Provides port security"),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("provider", "Provider Network", "Expose mapping of virtual networks to physical networks"),
    ("quotas", "Quota management support", "Expose functions for quotas management per project"),
    ("quota_details", "Quota details management support", "Expose functions for quotas usage statistics per project"),
    ("revision-if-match", "If-Match constraints based on revision_number",
     "Extension indicating that If-Match based on revision_number is supported."),
    ("router", "Neutron L3 Router", "Router abstraction for basic L3 forwarding between L2 Neutron networks and "
                                   "access to external networks via a NAT gateway."),
    ("router_availability_zone", "Router Availability Zone", "Availability zone support for router."),
    ("security-group", "security-group", "The security groups extension."),
    ("sorting", "Sorting support", "Extension that indicates that sorting is enabled."),
    ("standard-attr-description", "standard-attr-description",
     "Extension to add descriptions to standard attributes"),
    ("standard-attr-revisions", "Resource revision numbers",
     "This extension will display the revision number of neutron resources."),
    ("standard-attr-tag", "Tag support for resources with standard attribute: subnet, trunk, network_segment_range, "
                          "router, network, policy, subnetpool, port, security_group, floatingip",
     "Enables to set tag on resources with standard attribute."),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields to all Neutron "
                                                      "resources that have Neutron standard attributes."),
    ("stateful-security-group", "Stateful security group", "Indicates if the security group is stateful or not"),
    ("subnet-service-types", "Subnet service types", "Provides ability to set the subnet service_types field"),
    ("tag-creation", "Tag support for resource creation", "Enables to set tag on resources on creation."),
]

PORT_PROTOCOLS = {"tcp", "udp", "dccp", "sctp", "udplite", "6", "17", "33", "132", "136"}
ICMP_PROTOCOLS = {"icmp", "ipv6-icmp", "icmpv6", "1", "58"}
IPV6_ONLY_PROTOCOLS = {"ipv6-icmp", "icmpv6", "ipv6-encap", "ipv6-frag", "ipv6-nonxt", "ipv6-opts", "ipv6-route"}
PROTOCOL_NAMES = ["ah", "dccp", "egp", "esp", "gre", "hopopt", "icmp", "igmp", "ipip", "ipv6-encap", "ipv6-frag",
                  "ipv6-icmp", "icmpv6", "ipv6-nonxt", "ipv6-opts", "ipv6-route", "ospf", "pgm", "rsvp", "sctp",
                  "tcp", "udp", "udplite", "vrrp"]

NEUTRON_QUOTAS = ["floatingip", "network", "port", "rbac_policy", "router", "security_group",
                  "security_group_rule", "subnet", "subnetpool"]

# attributes a create (POST) may carry, and which of them an update (PUT) may change
CREATE_ATTRS = {
    "networks": {"name", "admin_state_up", "shared", "router:external", "description", "mtu",
                 "port_security_enabled", "availability_zone_hints", "provider:network_type",
                 "provider:physical_network", "provider:segmentation_id", "project_id", "tenant_id", "tags",
                 "is_default", "qos_policy_id"},
    "subnets": {"name", "network_id", "cidr", "ip_version", "gateway_ip", "enable_dhcp", "dns_nameservers",
                "host_routes", "allocation_pools", "description", "project_id", "tenant_id", "ipv6_address_mode",
                "ipv6_ra_mode", "service_types", "subnetpool_id", "segment_id", "use_default_subnetpool",
                "prefixlen", "tags"},
    "ports": {"name", "network_id", "admin_state_up", "mac_address", "fixed_ips", "device_id", "device_owner",
              "security_groups", "allowed_address_pairs", "extra_dhcp_opts", "description",
              "port_security_enabled", "binding:vnic_type", "binding:host_id", "binding:profile", "project_id",
              "tenant_id", "tags", "qos_policy_id", "propagate_uplink_status"},
    "routers": {"name", "admin_state_up", "external_gateway_info", "description", "distributed", "ha",
                "availability_zone_hints", "flavor_id", "project_id", "tenant_id", "tags"},
    "security-groups": {"name", "description", "project_id", "tenant_id", "stateful", "tags"},
    "security-group-rules": {"security_group_id", "direction", "ethertype", "protocol", "port_range_min",
                             "port_range_max", "remote_ip_prefix", "remote_group_id", "remote_address_group_id",
                             "description", "project_id", "tenant_id"},
    "floatingips": {"floating_network_id", "port_id", "fixed_ip_address", "floating_ip_address", "subnet_id",
                    "description", "project_id", "tenant_id", "tags", "qos_policy_id"},
}
UPDATE_ATTRS = {
    "networks": {"name", "admin_state_up", "shared", "router:external", "description", "mtu",
                 "port_security_enabled", "is_default", "qos_policy_id"},
    "subnets": {"name", "description", "gateway_ip", "enable_dhcp", "dns_nameservers", "host_routes",
                "allocation_pools", "service_types", "segment_id"},
    "ports": {"name", "description", "admin_state_up", "device_id", "device_owner", "fixed_ips", "security_groups",
              "allowed_address_pairs", "extra_dhcp_opts", "port_security_enabled", "binding:vnic_type",
              "binding:host_id", "binding:profile", "qos_policy_id", "mac_address", "propagate_uplink_status"},
    "routers": {"name", "admin_state_up", "external_gateway_info", "description", "routes", "distributed", "ha"},
    "security-groups": {"name", "description", "stateful"},
    "security-group-rules": {"description"},
    "floatingips": {"port_id", "fixed_ip_address", "description", "qos_policy_id"},
}
# query parameters a list may carry besides the attributes of the resource
LIST_PARAMS = {"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse", "tags", "tags-any",
               "not-tags", "not-tags-any"}
EXTRA_FILTERS = {"ports": {"ip_address", "subnet_id"}, "floatingips": {"subnet_id"}}
ADMIN_ONLY_FIELDS = {
    "networks": ("provider:network_type", "provider:physical_network", "provider:segmentation_id"),
    "ports": ("binding:host_id", "binding:profile", "binding:vif_details", "binding:vif_type"),
}


def _bad(message, kind="HTTPBadRequest"):
    return APIError(400, message, kind=kind)


def _invalid(message):
    return APIError(400, f"Invalid input for operation: {message}.", kind="InvalidInput")


def _policy(rule):
    return APIError(403, f"({rule}) is disallowed by policy", kind="PolicyNotAuthorized")


def not_found(collection, rid):
    _, _, kind, msg, _ = KINDS[collection]
    return APIError(404, msg.format(rid), kind=kind)


def store(cloud, collection):
    return getattr(cloud, KINDS[collection][1])


def _touch(res):
    res["updated_at"] = now_iso()
    res["revision_number"] = int(res.get("revision_number", 0)) + 1


def check_quota(cloud, project_id, resource, count=1):
    limit = cloud.quota(resource)
    if limit < 0:
        return
    if cloud.usage(project_id).get(resource, 0) + count > limit:
        raise APIError(409, f"Quota exceeded for resources: ['{resource}'].", kind="OverQuota")


def _to_bool(value, name):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0"):
        return value.lower() in ("true", "1")
    raise _bad(f"Invalid input for {name}. Reason: '{value}' is not a valid boolean value.")


def _mac(cloud):
    used = {p["mac_address"] for p in cloud.ports.values()}
    while True:
        mac = "fa:16:3e:%02x:%02x:%02x" % tuple(random.randrange(256) for _ in range(3))
        if mac not in used:
            return mac


def _used_ips(cloud, exclude_port=None):
    used = {ip["ip_address"] for p in cloud.ports.values() if p["id"] != exclude_port for ip in p["fixed_ips"]}
    used |= {f["floating_ip_address"] for f in cloud.floating_ips.values()}
    return used


def _in_pools(sub, ip):
    for pool in sub["allocation_pools"]:
        if ipaddress.ip_address(pool["start"]) <= ip <= ipaddress.ip_address(pool["end"]):
            return True
    return False


def _allocate_fixed_ips(cloud, network, requested, exclude_port=None):
    """Neutron's IPAM for a port: ``requested`` is the ``fixed_ips`` of the request or None."""
    subnets = [cloud.subnets[s] for s in network["subnets"] if s in cloud.subnets]
    used = _used_ips(cloud, exclude_port)
    out = []
    if requested is None:
        v4 = [s for s in subnets if s["ip_version"] == 4]
        if not v4:
            return []
        for sub in v4:
            ip = cloud.allocate_ip(sub["id"]) if exclude_port is None else _lowest_free(sub, used)
            if ip is not None:
                return [{"subnet_id": sub["id"], "ip_address": ip}]
        raise APIError(409, f"No more IP addresses available on network {network['id']}.",
                       kind="IpAddressGenerationFailure")
    if not isinstance(requested, list):
        raise _bad(f"Invalid input for fixed_ips. Reason: Invalid data format for fixed IP: '{requested}'.")
    for item in requested:
        if not isinstance(item, dict) or not set(item) <= {"subnet_id", "ip_address"} or not item:
            raise _bad(f"Invalid input for fixed_ips. Reason: Invalid data format for fixed IP: '{item}'.")
        sub = None
        if item.get("subnet_id"):
            sub = cloud.subnets.get(item["subnet_id"])
            if sub is None:
                raise not_found("subnets", item["subnet_id"])
            if sub["network_id"] != network["id"]:
                raise _invalid(f"Failed to create port on network {network['id']}, because fixed_ips included "
                               f"invalid subnet {sub['id']}")
        if item.get("ip_address"):
            try:
                ip = ipaddress.ip_address(item["ip_address"])
            except ValueError:
                raise _bad(f"Invalid input for fixed_ips. Reason: '{item['ip_address']}' is not a valid IP "
                           f"address.")
            if sub is None:
                sub = next((s for s in subnets if ip in ipaddress.ip_network(s["cidr"])), None)
                if sub is None:
                    raise _invalid(f"IP address {ip} is not a valid IP for any of the subnets on the specified "
                                   f"network")
            elif ip not in ipaddress.ip_network(sub["cidr"]):
                raise _invalid(f"IP address {ip} is not a valid IP for the specified subnet")
            if str(ip) in used or any(o["ip_address"] == str(ip) for o in out):
                raise APIError(409, f"IP address {ip} already allocated in subnet {sub['id']}",
                               kind="IpAddressAlreadyAllocated")
            out.append({"subnet_id": sub["id"], "ip_address": str(ip)})
        else:
            ip = _lowest_free(sub, used | {o["ip_address"] for o in out})
            if ip is None:
                raise APIError(409, f"No more IP addresses available on network {network['id']}.",
                               kind="IpAddressGenerationFailure")
            out.append({"subnet_id": sub["id"], "ip_address": ip})
    return out


def _lowest_free(sub, used):
    used = set(used) | {sub["gateway_ip"]}
    for pool in sub["allocation_pools"]:
        ip = ipaddress.ip_address(pool["start"])
        end = ipaddress.ip_address(pool["end"])
        while ip <= end:
            if str(ip) not in used:
                return str(ip)
            ip += 1
    return None


def _network_visible(cloud, net, project_id, is_admin):
    return is_admin or net["project_id"] == project_id or net["shared"] or net["router:external"]


def visible(cloud, collection, res, project_id, is_admin):
    if is_admin:
        return True
    if collection == "networks":
        return _network_visible(cloud, res, project_id, False)
    if collection == "subnets":
        net = cloud.networks.get(res["network_id"])
        return res["project_id"] == project_id or (net is not None and (net["shared"] or net["router:external"]))
    if collection == "security-group-rules":
        sg = cloud.security_groups.get(res["security_group_id"])
        return res["project_id"] == project_id or (sg is not None and sg["project_id"] == project_id)
    return res["project_id"] == project_id


def _validate_security_groups(cloud, sg_ids, project_id, is_admin):
    if not isinstance(sg_ids, list):
        raise _bad(f"Invalid input for security_groups. Reason: '{sg_ids}' is not a list.")
    for sg_id in sg_ids:
        sg = cloud.security_groups.get(sg_id)
        if sg is None or not (is_admin or sg["project_id"] == project_id):
            raise not_found("security-groups", sg_id)
    return list(dict.fromkeys(sg_ids))


def _port_status(port):
    if port["device_owner"].startswith("compute:") or port["device_owner"].startswith("network:"):
        return "ACTIVE" if port["device_id"] else "DOWN"
    return "DOWN"


def create_port(cloud, project_id, data, is_admin=False):
    """Create a port from a request body's ``port`` dict; the new port dict."""
    net_id = data.get("network_id")
    if not net_id:
        raise _bad("Failed to parse request. Required attribute 'network_id' not specified")
    net = cloud.networks.get(net_id)
    if net is None or not _network_visible(cloud, net, project_id, is_admin):
        raise not_found("networks", net_id)
    if not is_admin and net["project_id"] != project_id and not net["shared"]:
        raise _policy("rule:create_port and rule:create_port:network_id")
    check_quota(cloud, project_id, "port")
    device_owner = data.get("device_owner") or ""
    fixed_ips = _allocate_fixed_ips(cloud, net, data.get("fixed_ips"))
    port_security = _to_bool(data.get("port_security_enabled", net.get("port_security_enabled", True)),
                             "port_security_enabled")
    if "security_groups" in data and data["security_groups"] is not None:
        sgs = _validate_security_groups(cloud, data["security_groups"], project_id, is_admin)
        if sgs and not port_security:
            raise APIError(400, "Port security must be enabled and port must have an IP address in order to use "
                                "security groups.", kind="PortSecurityAndIPRequiredForSecurityGroups")
    elif port_security and not device_owner.startswith("network:"):
        sgs = [cloud.default_security_group(project_id)["id"]]
    else:
        sgs = []
    mac = data.get("mac_address") or _mac(cloud)
    if any(p["mac_address"] == mac and p["network_id"] == net_id for p in cloud.ports.values()):
        raise APIError(409, f"Unable to complete operation for network {net_id}. The mac address {mac} is in use.",
                       kind="MacAddressInUse")
    t = now_iso()
    port = {"id": new_id(), "name": data.get("name") or "", "network_id": net_id, "tenant_id": project_id,
            "project_id": project_id, "mac_address": mac,
            "admin_state_up": _to_bool(data.get("admin_state_up", True), "admin_state_up"),
            "status": "DOWN", "device_id": data.get("device_id") or "", "device_owner": device_owner,
            "fixed_ips": fixed_ips, "allowed_address_pairs": list(data.get("allowed_address_pairs") or []),
            "extra_dhcp_opts": list(data.get("extra_dhcp_opts") or []), "security_groups": sgs,
            "description": data.get("description") or "", "binding:vnic_type": data.get("binding:vnic_type", "normal"),
            "binding:host_id": data.get("binding:host_id") or "", "binding:profile": data.get("binding:profile") or {},
            "binding:vif_details": {}, "binding:vif_type": "unbound", "port_security_enabled": port_security,
            "qos_policy_id": data.get("qos_policy_id"), "qos_network_policy_id": None, "resource_request": None,
            "ip_allocation": "immediate", "tags": list(data.get("tags") or []), "created_at": t, "updated_at": t,
            "revision_number": 1, "propagate_uplink_status": bool(data.get("propagate_uplink_status", False))}
    port["status"] = _port_status(port)
    cloud.ports[port["id"]] = port
    return port


async def _runner_add(cloud, fip):
    if cloud.vm_runner is not None and fip.get("fixed_ip_address"):
        await cloud.vm_runner.add_floating_ip(fip["floating_ip_address"], fip["fixed_ip_address"])


async def _runner_remove(cloud, fip):
    if cloud.vm_runner is not None and fip.get("fixed_ip_address"):
        await cloud.vm_runner.remove_floating_ip(fip["floating_ip_address"])


def _clear_association(fip):
    fip.update({"port_id": None, "fixed_ip_address": None, "router_id": None, "status": "DOWN"})
    _touch(fip)


async def disassociate_floating_ips(cloud, port_id):
    """Drop the association of every floating IP with ``port_id`` (port deleted)."""
    for fip in list(cloud.floating_ips.values()):
        if fip.get("port_id") == port_id:
            try:
                await _runner_remove(cloud, fip)
            except Exception:  # the port goes anyway; the forwarder is the runner's business
                log.exception("removing floating IP %s failed", fip["floating_ip_address"])
            _clear_association(fip)


async def delete_port(cloud, port_id):
    """Delete a port and disassociate its floating IPs (no policy checks)."""
    port = cloud.ports.get(port_id)
    if port is None:
        return
    await disassociate_floating_ips(cloud, port_id)
    cloud.ports.pop(port_id, None)
    if port["device_owner"] == "network:router_interface":
        router = cloud.routers.get(port["device_id"])
        if router is not None:
            for ip in port["fixed_ips"]:
                if ip["subnet_id"] in router["_interfaces"]:
                    router["_interfaces"].remove(ip["subnet_id"])


def _router_port(cloud, router, subnet_id):
    for p in cloud.ports.values():
        if p["device_id"] == router["id"] and p["device_owner"] == "network:router_interface" and \
                any(ip["subnet_id"] == subnet_id for ip in p["fixed_ips"]):
            return p
    return None


def ensure_router_ports(cloud):
    """Interface ports for routers the cloud seeded with ``_interfaces`` only."""
    for router in list(cloud.routers.values()):
        for subnet_id in list(router["_interfaces"]):
            sub = cloud.subnets.get(subnet_id)
            if sub is None or _router_port(cloud, router, subnet_id) is not None:
                continue
            t = now_iso()
            port = {"id": new_id(), "name": "", "network_id": sub["network_id"], "tenant_id": router["project_id"],
                    "project_id": router["project_id"], "mac_address": _mac(cloud), "admin_state_up": True,
                    "status": "ACTIVE", "device_id": router["id"], "device_owner": "network:router_interface",
                    "fixed_ips": [{"subnet_id": subnet_id, "ip_address": sub["gateway_ip"]}],
                    "allowed_address_pairs": [], "extra_dhcp_opts": [], "security_groups": [], "description": "",
                    "binding:vnic_type": "normal", "binding:host_id": "", "binding:profile": {},
                    "binding:vif_details": {}, "binding:vif_type": "unbound", "port_security_enabled": False,
                    "qos_policy_id": None, "qos_network_policy_id": None, "resource_request": None,
                    "ip_allocation": "immediate", "tags": [], "created_at": t, "updated_at": t,
                    "revision_number": 1, "propagate_uplink_status": False}
            cloud.ports[port["id"]] = port


def _suggest_cidr(cloud, prefixlen=24):
    prefixlen = prefixlen if 16 <= prefixlen <= 29 else 24
    taken = [ipaddress.ip_network(s["cidr"]) for s in cloud.subnets.values() if s["ip_version"] == 4]
    for second in range(44, 256):
        cand = ipaddress.ip_network(f"127.{second}.0.0/{prefixlen}")
        if not any(cand.overlaps(t) for t in taken):
            return str(cand)
    return "127.44.0.0/24"


class NeutronHandler(BaseHandler):
    service = "network"

    def initialize(self, cloud, collection=None):
        self.cloud = cloud
        self.collection = collection

    # -- helpers -----------------------------------------------------------
    def _visible(self, collection, res):
        return visible(self.cloud, collection, res, self.project_id, self.is_admin)

    def find(self, collection, rid):
        res = store(self.cloud, collection).get(rid)
        if res is None or not self._visible(collection, res):
            raise not_found(collection, rid)
        return res

    def check_owner(self, collection, res, action):
        if self.is_admin:
            return
        singular = KINDS[collection][0]
        if res["project_id"] != self.project_id:
            raise _policy(f"rule:{action}_{singular}")
        if collection == "networks" and res["router:external"]:
            raise _policy(f"rule:{action}_{singular}")
        if collection == "subnets" and self.cloud.networks.get(res["network_id"], {}).get("router:external"):
            raise _policy(f"rule:{action}_{singular}")

    def check_revision(self, res):
        header = self.request.headers.get("If-Match")
        if not header:
            return
        m = re.match(r"^\s*revision_number=(\d+)\s*$", header)
        if m and int(m.group(1)) != int(res.get("revision_number", 0)):
            raise APIError(412, f"Constrained to {m.group(1)}, but current revision is {res['revision_number']}",
                           kind="RevisionNumberConstraintFailed")

    def resource_body(self, collection, allowed):
        data = self.body()
        singular = KINDS[collection][0]
        if not data:
            raise _bad("Resource body required")
        if singular not in data:
            if COLLECTION_KEYS[collection] in data:
                raise _bad("Bulk operations are not supported by this cloud.")
            raise _bad(f"Unable to find '{singular}' in request body")
        item = data[singular]
        if not isinstance(item, dict):
            raise _bad(f"Invalid format: {item}")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise _bad("Unrecognized attribute(s) '%s'" % ", ".join(unknown))
        return item

    def create_project(self, data, collection):
        project = data.get("project_id") or data.get("tenant_id") or self.project_id
        if data.get("project_id") and data.get("tenant_id") and data["project_id"] != data["tenant_id"]:
            raise _bad("'project_id' and 'tenant_id' do not match")
        if project != self.project_id and not self.is_admin:
            raise _bad("Specifying 'project_id' or 'tenant_id' other than the authenticated project in request "
                       "requires admin privileges")
        return project

    def view(self, collection, res):
        out = {k: copy.deepcopy(v) for k, v in res.items() if not k.startswith("_")}
        if collection == "security-groups":
            out["security_group_rules"] = [{k: copy.deepcopy(v) for k, v in r.items() if not k.startswith("_")}
                                           for r in res["security_group_rules"]]
        elif collection == "floatingips":
            port = self.cloud.ports.get(res.get("port_id") or "")
            if port is None:
                out.update({"port_id": None, "fixed_ip_address": None, "router_id": None, "status": "DOWN"})
            out["port_details"] = None if port is None else {
                "name": port["name"], "network_id": port["network_id"], "mac_address": port["mac_address"],
                "admin_state_up": port["admin_state_up"], "status": port["status"],
                "device_id": port["device_id"], "device_owner": port["device_owner"]}
        if not self.is_admin:
            for key in ADMIN_ONLY_FIELDS.get(collection, ()):
                out.pop(key, None)
        return out

    def fields_view(self, collection, res):
        out = self.view(collection, res)
        fields = [f for v in self.get_arguments("fields") for f in v.split(",") if f]
        if fields:
            out = {k: v for k, v in out.items() if k in fields}
        return out

    # -- list ----------------------------------------------------------------
    def _matches(self, collection, res, key, values):
        if key in ("tenant_id", "project_id"):
            return res.get("project_id") in values
        if collection == "ports" and key == "fixed_ips":
            for v in values:
                k, _, val = v.partition("=")
                if k == "ip_address_substr":
                    if not any(val in ip["ip_address"] for ip in res["fixed_ips"]):
                        return False
                elif k in ("ip_address", "subnet_id"):
                    if not any(ip[k] == val for ip in res["fixed_ips"]):
                        return False
                else:
                    raise _bad(f"{v} is invalid attribute for filtering")
            return True
        if collection == "ports" and key in ("ip_address", "subnet_id"):
            return any(ip[key] in values for ip in res["fixed_ips"])
        if collection == "floatingips" and key == "subnet_id":
            return res.get("_subnet_id") in values
        if key not in res:
            return False
        v = res[key]
        if isinstance(v, bool):
            return any(_to_bool(x, key) == v for x in values)
        if isinstance(v, list):
            return any(x in [str(i) for i in v] for x in values)
        if v is None:
            return any(x in ("", "None", "null") for x in values)
        if isinstance(v, dict):
            return False
        return str(v) in values

    def _known_keys(self, collection):
        keys = set(CREATE_ATTRS[collection]) | UPDATE_ATTRS[collection] | {"id", "status", "tenant_id",
                                                                           "project_id", "created_at",
                                                                           "updated_at", "revision_number"}
        for res in store(self.cloud, collection).values():
            keys |= {k for k in res if not k.startswith("_")}
            break
        return keys | EXTRA_FILTERS.get(collection, set())

    def list(self, collection):
        cloud = self.cloud
        if collection == "security-groups" and not self.is_admin:
            cloud.default_security_group(self.project_id)
        args = {k: [v.decode() for v in vs] for k, vs in self.request.query_arguments.items()}
        known = self._known_keys(collection)
        for key in args:
            if key not in LIST_PARAMS and key not in known:
                raise _bad(f"{key} is invalid attribute for filtering")
        items = [r for r in store(cloud, collection).values() if self._visible(collection, r)]
        for key, values in args.items():
            if key in LIST_PARAMS:
                continue
            items = [r for r in items if self._matches(collection, r, key, values)]

        def tagset(name):
            return [t for v in args.get(name, []) for t in v.split(",") if t]
        if tagset("tags"):
            items = [r for r in items if set(tagset("tags")) <= set(r.get("tags", []))]
        if tagset("tags-any"):
            items = [r for r in items if set(tagset("tags-any")) & set(r.get("tags", []))]
        if tagset("not-tags"):
            items = [r for r in items if not set(tagset("not-tags")) <= set(r.get("tags", []))]
        if tagset("not-tags-any"):
            items = [r for r in items if not set(tagset("not-tags-any")) & set(r.get("tags", []))]
        sort_keys = self.get_arguments("sort_key")
        sort_dirs = self.get_arguments("sort_dir")
        for i in reversed(range(len(sort_keys))):
            key = sort_keys[i]
            if key not in known:
                raise _bad(f"{key} is an invalid attribute for sort_key")
            direction = sort_dirs[i] if i < len(sort_dirs) else "asc"
            if direction not in ("asc", "desc"):
                raise _bad(f"{direction} is an invalid value for sort_dir, valid values are 'asc' and 'desc'")
            items.sort(key=lambda r: (r.get(key) is None, str(r.get(key))), reverse=direction == "desc")
        links = []
        limit = self.get_argument("limit", None)
        marker = self.get_argument("marker", None)
        if marker:
            idx = next((i for i, r in enumerate(items) if r["id"] == marker), None)
            if idx is None:
                raise not_found(collection, marker)
            items = items[idx + 1:]
        if limit:
            try:
                limit = int(limit)
            except ValueError:
                raise _bad(f"Invalid input for limit. Reason: '{limit}' is not an integer.")
            if limit > 0 and len(items) > limit:
                items = items[:limit]
                query = [(k, v) for k, vs in args.items() if k != "marker" for v in vs]
                query.append(("marker", items[-1]["id"]))
                links.append({"rel": "next", "href": f"{cloud.base_url}{self.request.path}?"
                                                    f"{urllib.parse.urlencode(query)}"})
        key = COLLECTION_KEYS[collection]
        body = {key: [self.fields_view(collection, r) for r in items]}
        if links:
            body[key + "_links"] = links
        self.send(body)


class VersionsHandler(NeutronHandler):
    requires_auth = False

    def get(self):
        self.send({"versions": [{"id": "v2.0", "status": "CURRENT",
                                 "links": [{"href": f"{self.cloud.base_url}{V2}/", "rel": "self"}]}]})


class V2Handler(NeutronHandler):
    requires_auth = False

    def get(self):
        resources = []
        for coll in ("subnets", "networks", "ports", "routers", "floatingips", "security-groups",
                     "security-group-rules", "quotas", "extensions"):
            name = KINDS[coll][0] if coll in KINDS else coll.rstrip("s")
            resources.append({"links": [{"href": f"{self.cloud.base_url}{V2}/{coll}", "rel": "self"}],
                              "name": name, "collection": coll})
        self.send({"resources": resources})


def _extension(alias, name, description):
    return {"alias": alias, "name": name, "description": description, "updated": "2013-01-20T00:00:00-00:00",
            "links": []}


class ExtensionsHandler(NeutronHandler):
    def get(self, alias=None):
        if alias is None:
            return self.send({"extensions": [_extension(*e) for e in EXTENSIONS]})
        for e in EXTENSIONS:
            if e[0] == alias:
                return self.send({"extension": _extension(*e)})
        raise APIError(404, f"Extension with alias {alias} does not exist", kind="HTTPNotFound")


class AvailabilityZonesHandler(NeutronHandler):
    """``availability_zones`` (the ``availability_zone`` extension): one zone, ``nova``, for networks and routers."""

    def get(self):
        zones = [{"name": "nova", "resource": r, "state": "available"} for r in ("network", "router")]
        for key in ("name", "resource", "state"):
            wanted = self.get_arguments(key)
            if wanted:
                zones = [z for z in zones if z[key] in wanted]
        self.send({"availability_zones": zones})


class CollectionHandler(NeutronHandler):
    def get(self):
        self.list(self.collection)

    async def post(self):
        coll = self.collection
        data = self.resource_body(coll, CREATE_ATTRS[coll])
        if "tags" in data and (not isinstance(data["tags"], list) or
                               not all(isinstance(t, str) for t in data["tags"])):
            raise _bad(f"Invalid input for tags. Reason: '{data['tags']}' is not a list of strings.")
        project = self.create_project(data, coll)
        res = await getattr(self, "create_" + coll.replace("-", "_"))(data, project)
        self.send({KINDS[coll][0]: self.view(coll, res)}, status=201)

    # -- networks ------------------------------------------------------------
    async def create_networks(self, data, project):
        cloud = self.cloud
        external = _to_bool(data.get("router:external", False), "router:external")
        shared = _to_bool(data.get("shared", False), "shared")
        if not self.is_admin:
            if shared:
                raise _policy("rule:create_network and rule:create_network:shared")
            if external:
                raise _policy("rule:create_network and rule:create_network:router:external")
            if any(k.startswith("provider:") for k in data):
                raise _policy("rule:create_network and rule:create_network:provider:network_type")
        if not external:
            check_quota(cloud, project, "network")
        extra = {}
        for key in ("description", "mtu", "availability_zone_hints", "provider:physical_network",
                    "provider:segmentation_id", "qos_policy_id", "provider:network_type"):
            if key in data:
                extra[key] = data[key]
        if "port_security_enabled" in data:
            extra["port_security_enabled"] = _to_bool(data["port_security_enabled"], "port_security_enabled")
        if "admin_state_up" in data:
            extra["admin_state_up"] = _to_bool(data["admin_state_up"], "admin_state_up")
        extra["tags"] = list(data.get("tags") or [])
        net = cloud.add_network(project, data.get("name") or "", external=external, shared=shared, **extra)
        net["is_default"] = bool(data.get("is_default", False))
        return net

    # -- subnets -------------------------------------------------------------
    async def create_subnets(self, data, project):
        cloud = self.cloud
        for req in ("network_id", "ip_version"):
            if data.get(req) in (None, ""):
                raise _bad(f"Failed to parse request. Required attribute '{req}' not specified")
        net = self.find("networks", data["network_id"])
        if not self.is_admin and net["project_id"] != project:
            raise _policy("rule:create_subnet and rule:create_subnet:network_id")
        if data.get("subnetpool_id") or data.get("use_default_subnetpool"):
            raise _bad("This cloud has no subnet pools; give a cidr such as "
                       f"'{_suggest_cidr(cloud)}'.")
        if "cidr" not in data or data["cidr"] in (None, ""):
            raise _bad("Bad subnet request: a subnetpool must be specified in the absence of a cidr.",
                       kind="BadRequest")
        try:
            ip_version = int(data["ip_version"])
        except (TypeError, ValueError):
            raise _bad(f"Invalid input for ip_version. Reason: '{data['ip_version']}' is not in [4, 6].")
        if ip_version not in (4, 6):
            raise _bad(f"Invalid input for ip_version. Reason: {ip_version} is not in [4, 6].")
        if not isinstance(data["cidr"], str):
            raise _bad(f"Invalid input for cidr. Reason: '{data['cidr']}' is not a valid IP subnet.")
        try:
            cidr = ipaddress.ip_network(data["cidr"], strict=False)
            written = ipaddress.ip_interface(data["cidr"])
        except ValueError:
            raise _bad(f"Invalid input for cidr. Reason: '{data['cidr']}' is not a valid IP subnet.")
        # as Neutron: host bits are accepted (10.0.0.5/24 becomes 10.0.0.0/24), odd spellings are not
        if "/" not in data["cidr"] or (written.version == 4 and str(written) != data["cidr"]):
            raise _bad(f"Invalid input for cidr. Reason: '{data['cidr']}' isn't a recognized IP subnet cidr, "
                       f"'{cidr}' is recommended.")
        if cidr.version != ip_version:
            raise _invalid(f"Cidr {data['cidr']} does not match ip_version {ip_version}")
        if cidr.version != 4 or not cidr.subnet_of(LOCAL_RANGE):
            raise _invalid(f"The local cloud only allows subnets inside 127.0.0.0/8, because fixed IPs are "
                           f"loopback addresses that the host reaches; {data['cidr']} is outside it. Use a CIDR "
                           f"such as {_suggest_cidr(cloud, cidr.prefixlen)}")
        if cidr.prefixlen > 30:
            raise _invalid(f"Requested subnet with cidr: {cidr} is too small; use a prefix length of 30 or less")
        # overlapping IPs are allowed across networks (Neutron's default); fixed IPs stay unique cloud-wide
        # all the same, since they are the host's loopback addresses
        for other in cloud.subnets.values():
            if other["network_id"] == net["id"] and other["ip_version"] == 4 and \
                    cidr.overlaps(ipaddress.ip_network(other["cidr"])):
                raise _invalid(f"Requested subnet with cidr: {cidr} for network: {net['id']} overlaps with "
                               f"another subnet")
        gateway = data.get("gateway_ip", "auto")
        if gateway not in ("auto", None):
            try:
                gw = ipaddress.ip_address(gateway)
            except ValueError:
                raise _bad(f"Invalid input for gateway_ip. Reason: '{gateway}' is not a valid IP address.")
            if gw not in cidr or gw in (cidr.network_address, cidr.broadcast_address):
                raise _invalid(f"Gateway IP {gateway} conflicts with allocation pool or is outside subnet {cidr}")
            gateway = str(gw)
        check_quota(cloud, project, "subnet")
        extra = {}
        if "allocation_pools" in data and data["allocation_pools"]:
            extra["allocation_pools"] = self._pools(data["allocation_pools"], cidr, gateway)
        for key in ("description", "dns_nameservers", "host_routes", "service_types", "ipv6_address_mode",
                    "ipv6_ra_mode"):
            if key in data and data[key] is not None:
                extra[key] = copy.deepcopy(data[key])
        if "enable_dhcp" in data:
            extra["enable_dhcp"] = _to_bool(data["enable_dhcp"], "enable_dhcp")
        extra["tags"] = list(data.get("tags") or [])
        sub = cloud.add_subnet(project, net["id"], data.get("name") or "", str(cidr), gateway_ip=gateway, **extra)
        if gateway is None:
            sub["allocation_pools"] = extra.get("allocation_pools") or [
                {"start": str(cidr.network_address + 1), "end": str(cidr.broadcast_address - 1)}]
        _touch(net)
        return sub

    def _pools(self, pools, cidr, gateway):
        out = []
        for p in pools:
            try:
                start, end = ipaddress.ip_address(p["start"]), ipaddress.ip_address(p["end"])
            except (KeyError, TypeError, ValueError):
                raise _bad(f"Invalid input for allocation_pools. Reason: Invalid data format for IP pool: '{p}'.")
            if start not in cidr or end not in cidr or start > end:
                raise APIError(400, f"The allocation pool {start}-{end} spans beyond the subnet cidr {cidr}.",
                               kind="OutOfBoundsAllocationPool")
            out.append({"start": str(start), "end": str(end)})
        return out

    # -- ports ---------------------------------------------------------------
    async def create_ports(self, data, project):
        if (data.get("device_owner") or "").startswith("network:") and not self.is_admin:
            raise _policy("rule:create_port and rule:create_port:device_owner")
        return create_port(self.cloud, project, data, is_admin=self.is_admin)

    # -- routers -------------------------------------------------------------
    def _gateway_info(self, info, router_id=None):
        if info is None or info == {}:
            return None
        if not isinstance(info, dict) or not info.get("network_id"):
            raise _bad(f"Invalid input for external_gateway_info. Reason: Validation of dictionary's keys "
                       f"failed. Expected keys: {{'network_id'}} Provided keys: {set(info or {})}.")
        net = self.find("networks", info["network_id"])
        if not net["router:external"]:
            raise APIError(400, f"Bad router request: Network {net['id']} is not an external network.",
                           kind="BadRequest")
        return {"network_id": net["id"], "enable_snat": _to_bool(info.get("enable_snat", True), "enable_snat"),
                "external_fixed_ips": copy.deepcopy(info.get("external_fixed_ips") or [])}

    async def create_routers(self, data, project):
        cloud = self.cloud
        if not self.is_admin and (data.get("distributed") or data.get("ha")):
            raise _policy("rule:create_router and rule:create_router:distributed")
        gw = self._gateway_info(data.get("external_gateway_info"))
        check_quota(cloud, project, "router")
        router = cloud.add_router(project, data.get("name") or "")
        router["external_gateway_info"] = gw
        for key in ("description", "availability_zone_hints", "flavor_id"):
            if key in data and data[key] is not None:
                router[key] = copy.deepcopy(data[key])
        if "admin_state_up" in data:
            router["admin_state_up"] = _to_bool(data["admin_state_up"], "admin_state_up")
        router["tags"] = list(data.get("tags") or [])
        return router

    # -- security groups -------------------------------------------------------
    async def create_security_groups(self, data, project):
        cloud = self.cloud
        cloud.default_security_group(project)
        name = data.get("name") or ""
        if name == "default":
            raise APIError(409, "Default security group already exists.", kind="SecurityGroupDefaultAlreadyExists")
        check_quota(cloud, project, "security_group")
        sg = cloud.add_security_group(project, name, data.get("description") or "")
        if "stateful" in data:
            sg["stateful"] = _to_bool(data["stateful"], "stateful")
        sg["tags"] = list(data.get("tags") or [])
        return sg

    async def create_security_group_rules(self, data, project):
        cloud = self.cloud
        for req in ("security_group_id", "direction"):
            if data.get(req) in (None, ""):
                raise _bad(f"Failed to parse request. Required attribute '{req}' not specified")
        sg = cloud.security_groups.get(data["security_group_id"])
        if sg is None or not (self.is_admin or sg["project_id"] == self.project_id):
            raise not_found("security-groups", data["security_group_id"])
        rule = validate_rule(cloud, data, self.project_id, self.is_admin)
        for existing in sg["security_group_rules"]:
            if _rule_key(existing) == _rule_key(rule):
                raise APIError(409, f"Security group rule already exists. Rule id is {existing['id']}.",
                               kind="SecurityGroupRuleExists")
        check_quota(cloud, project, "security_group_rule")
        new = cloud.add_security_group_rule(project, sg["id"], rule["direction"], rule["ethertype"],
                                            protocol=rule["protocol"], port_range_min=rule["port_range_min"],
                                            port_range_max=rule["port_range_max"],
                                            remote_ip_prefix=rule["remote_ip_prefix"],
                                            remote_group_id=rule["remote_group_id"],
                                            description=data.get("description") or "")
        new["normalized_cidr"] = rule["normalized_cidr"]
        _touch(sg)
        return new

    # -- floating IPs ----------------------------------------------------------
    async def create_floatingips(self, data, project):
        cloud = self.cloud
        net_id = data.get("floating_network_id")
        if not net_id:
            raise _bad("Failed to parse request. Required attribute 'floating_network_id' not specified")
        net = cloud.networks.get(net_id)
        if net is None or not _network_visible(cloud, net, self.project_id, self.is_admin):
            raise not_found("networks", net_id)
        if not net["router:external"]:
            raise APIError(400, f"Bad floatingip request: Network {net_id} is not a valid external network.",
                           kind="BadRequest")
        if data.get("floating_ip_address") and not self.is_admin:
            raise _policy("rule:create_floatingip and rule:create_floatingip:floating_ip_address")
        check_quota(cloud, project, "floatingip")
        subnets = [cloud.subnets[s] for s in net["subnets"] if s in cloud.subnets and cloud.subnets[s]["ip_version"] == 4]
        if data.get("subnet_id"):
            sub = cloud.subnets.get(data["subnet_id"])
            if sub is None:
                raise not_found("subnets", data["subnet_id"])
            if sub["network_id"] != net_id:
                raise APIError(400, f"Bad floatingip request: Subnet {sub['id']} does not belong to network "
                                    f"{net_id}.", kind="BadRequest")
            subnets = [sub]
        used = _used_ips(cloud)
        address, subnet = None, None
        if data.get("floating_ip_address"):
            ip = data["floating_ip_address"]
            subnet = next((s for s in subnets if ipaddress.ip_address(ip) in ipaddress.ip_network(s["cidr"])), None)
            if subnet is None:
                raise _invalid(f"IP address {ip} is not a valid IP for any of the subnets on the specified network")
            if ip in used:
                raise APIError(409, f"IP address {ip} already allocated in subnet {subnet['id']}",
                               kind="IpAddressAlreadyAllocated")
            address = ip
        else:
            for sub in subnets:
                address = _lowest_free(sub, used)
                if address:
                    subnet = sub
                    break
        if address is None:
            raise APIError(409, f"No more IP addresses available on network {net_id}.",
                           kind="IpAddressGenerationFailure")
        t = now_iso()
        fip = {"id": new_id(), "tenant_id": project, "project_id": project, "floating_ip_address": address,
               "floating_network_id": net_id, "router_id": None, "port_id": None, "fixed_ip_address": None,
               "status": "DOWN", "description": data.get("description") or "", "tags": list(data.get("tags") or []),
               "qos_policy_id": data.get("qos_policy_id"), "port_forwardings": [], "created_at": t,
               "updated_at": t, "revision_number": 0, "_subnet_id": subnet["id"]}
        if data.get("port_id"):
            self.check_association(fip, data["port_id"], data.get("fixed_ip_address"))
        cloud.floating_ips[fip["id"]] = fip
        if data.get("port_id"):
            await self.associate(fip, data["port_id"], data.get("fixed_ip_address"), created=True)
        return fip

    def check_association(self, fip, port_id, fixed_ip):
        """Validate associating ``fip`` with a port; (port, fixed address, router id)."""
        cloud = self.cloud
        port = cloud.ports.get(port_id)
        if port is None or not (self.is_admin or port["project_id"] == fip["project_id"]):
            raise not_found("ports", port_id)
        v4 = [ip for ip in port["fixed_ips"] if ipaddress.ip_address(ip["ip_address"]).version == 4]
        if fixed_ip:
            chosen = next((ip for ip in v4 if ip["ip_address"] == fixed_ip), None)
            if chosen is None:
                raise APIError(400, f"Bad floatingip request: Port {port_id} does not have fixed ip {fixed_ip}.",
                               kind="BadRequest")
        elif not v4:
            raise APIError(400, f"Bad floatingip request: Port {port_id} does not have any IPv4 address.",
                           kind="BadRequest")
        else:
            chosen = v4[0]
        for other in cloud.floating_ips.values():
            if other["id"] != fip["id"] and other.get("port_id") == port_id and \
                    other.get("fixed_ip_address") == chosen["ip_address"]:
                raise APIError(409, f"Cannot associate floating IP {fip['floating_ip_address']} ({fip['id']}) "
                                    f"with port {port_id} using fixed IP {chosen['ip_address']}, as that fixed IP "
                                    f"already has a floating IP on external network "
                                    f"{fip['floating_network_id']}.", kind="FloatingIPPortAlreadyAssociated")
        router = next((r for r in cloud.routers.values()
                       if (r.get("external_gateway_info") or {}).get("network_id") == fip["floating_network_id"]
                       and _router_port(cloud, r, chosen["subnet_id"]) is not None), None)
        if router is None:
            raise APIError(404, f"External network {fip['floating_network_id']} is not reachable from subnet "
                                f"{chosen['subnet_id']}.  Therefore, cannot associate Port {port_id} with a "
                                f"Floating IP.", kind="ExternalGatewayForFloatingIPNotFound")
        return port, chosen["ip_address"], router["id"]

    async def associate(self, fip, port_id, fixed_ip, created=False):
        port, address, router_id = self.check_association(fip, port_id, fixed_ip)
        if fip.get("port_id") and (fip["port_id"], fip["fixed_ip_address"]) != (port_id, address):
            await self.disassociate(fip)
        elif fip.get("port_id"):
            return
        old = dict(fip)
        fip.update({"port_id": port["id"], "fixed_ip_address": address, "router_id": router_id,
                    "status": "ACTIVE"})
        if not created:
            _touch(fip)
        try:
            await _runner_add(self.cloud, fip)
        except Exception as e:
            log.exception("associating floating IP %s failed", fip["floating_ip_address"])
            fip.clear()
            fip.update(old)
            fip.update({"port_id": None, "fixed_ip_address": None, "router_id": None, "status": "DOWN"})
            raise APIError(500, f"Failed to associate floating IP {fip['floating_ip_address']}: {e}")

    async def disassociate(self, fip):
        if not fip.get("port_id"):
            return
        try:
            await _runner_remove(self.cloud, fip)
        except Exception:
            log.exception("removing floating IP %s failed", fip["floating_ip_address"])
        _clear_association(fip)


def _rule_key(rule):
    prefix = rule.get("normalized_cidr") or rule.get("remote_ip_prefix")
    if prefix in ("0.0.0.0/0", "::/0"):
        prefix = None
    return (rule["direction"], rule["ethertype"], rule["protocol"], rule["port_range_min"],
            rule["port_range_max"], prefix, rule["remote_group_id"], rule.get("remote_address_group_id"))


def _port_value(value, name):
    if value is None:
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise _bad(f"Invalid input for {name}. Reason: '{value}' is not a valid port number.")
    if not 0 <= v <= 65535:
        raise _bad(f"Invalid input for {name}. Reason: '{value}' is not a valid port number.")
    return v


def validate_rule(cloud, data, project_id, is_admin):
    """Neutron's checks of a security group rule; the normalized rule."""
    direction = data.get("direction")
    if direction not in ("ingress", "egress"):
        raise _bad(f"Invalid input for direction. Reason: '{direction}' is not in ['ingress', 'egress'].")
    ethertype = data.get("ethertype") or "IPv4"
    norm = {"ipv4": "IPv4", "ipv6": "IPv6"}.get(str(ethertype).lower())
    if norm is None:
        raise _bad(f"Invalid input for ethertype. Reason: '{ethertype}' is not in ['IPv4', 'IPv6'].")
    ethertype = norm
    protocol = data.get("protocol")
    if protocol is not None:
        protocol = str(protocol).lower()
        if protocol == "any":
            protocol = None
        elif protocol.isdigit():
            if not 0 <= int(protocol) <= 255:
                raise APIError(400, f"Security group rule protocol {protocol} not supported. Only protocol values "
                                    f"{[None] + PROTOCOL_NAMES} and integer representations [0 to 255] are "
                                    f"supported.", kind="SecurityGroupRuleInvalidProtocol")
        elif protocol not in PROTOCOL_NAMES:
            raise APIError(400, f"Security group rule protocol {protocol} not supported. Only protocol values "
                                f"{[None] + PROTOCOL_NAMES} and integer representations [0 to 255] are supported.",
                           kind="SecurityGroupRuleInvalidProtocol")
    if protocol in IPV6_ONLY_PROTOCOLS and ethertype == "IPv4":
        raise APIError(400, f"Invalid ethertype {ethertype} for protocol {protocol}.",
                       kind="SecurityGroupEthertypeConflictWithProtocol")
    pmin = _port_value(data.get("port_range_min"), "port_range_min")
    pmax = _port_value(data.get("port_range_max"), "port_range_max")
    if (pmin is not None or pmax is not None) and protocol is None:
        raise APIError(400, "Must also specify protocol if port range is given.",
                       kind="SecurityGroupProtocolRequiredWithPorts")
    if protocol in PORT_PROTOCOLS and (pmin is not None or pmax is not None):
        if pmin is None or pmax is None or pmin > pmax:
            raise APIError(400, "For TCP/UDP protocols, port_range_min must be <= port_range_max",
                           kind="SecurityGroupInvalidPortRange")
        for v in (pmin, pmax):
            if v == 0:
                raise APIError(400, f"Invalid value for port {v}", kind="SecurityGroupInvalidPortValue")
    elif protocol in ICMP_PROTOCOLS:
        for field, attr, v in (("type", "port_range_min", pmin), ("code", "port_range_max", pmax)):
            if v is not None and not 0 <= v <= 255:
                raise APIError(400, f"Invalid value for ICMP {field} ({attr}) {v}. It must be 0 to 255.",
                               kind="SecurityGroupInvalidIcmpValue")
        if pmin is None and pmax is not None:
            raise APIError(400, f"ICMP code (port-range-max) {pmax} is provided but ICMP type (port-range-min) "
                                f"is missing.", kind="SecurityGroupMissingIcmpType")
    elif protocol is not None and (pmin is not None or pmax is not None):
        raise APIError(400, f"Ports cannot be specified for protocol {protocol}. Ports are only supported for "
                            f"['tcp', 'udp', 'dccp', 'sctp', 'udplite'] and ICMP types and codes for "
                            f"['icmp', 'ipv6-icmp', 'icmpv6'].", kind="SecurityGroupInvalidProtocolForPort")
    prefix = data.get("remote_ip_prefix")
    remote_group = data.get("remote_group_id")
    if data.get("remote_address_group_id"):
        raise APIError(404, f"Address group {data['remote_address_group_id']} could not be found.",
                       kind="AddressGroupNotFound")
    if prefix and remote_group:
        raise APIError(400, "Only remote_ip_prefix or remote_group_id may be provided.",
                       kind="SecurityGroupRemoteGroupAndRemoteIpPrefix")
    normalized = None
    if prefix:
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            raise _bad(f"Invalid input for remote_ip_prefix. Reason: '{prefix}' is not a valid IP subnet.")
        if f"IPv{net.version}" != ethertype:
            raise APIError(400, f"Conflicting value ethertype {ethertype} for CIDR {prefix}",
                           kind="SecurityGroupRuleParameterConflict")
        normalized = str(net)
    if remote_group:
        sg = cloud.security_groups.get(remote_group)
        if sg is None or not (is_admin or sg["project_id"] == project_id):
            raise not_found("security-groups", remote_group)
    return {"direction": direction, "ethertype": ethertype, "protocol": protocol, "port_range_min": pmin,
            "port_range_max": pmax, "remote_ip_prefix": prefix, "remote_group_id": remote_group,
            "remote_address_group_id": None, "normalized_cidr": normalized}


class ItemHandler(CollectionHandler):
    def get(self, rid):
        self.send({KINDS[self.collection][0]: self.fields_view(self.collection, self.find(self.collection, rid))})

    async def post(self, rid=None):
        raise web_405()

    async def put(self, rid):
        coll = self.collection
        res = self.find(coll, rid)
        data = self.resource_body(coll, CREATE_ATTRS[coll] | UPDATE_ATTRS[coll] | {"id", "status", "created_at",
                                                                                 "updated_at",
                                                                                 "revision_number"})
        readonly = sorted(set(data) - UPDATE_ATTRS[coll])
        if readonly:
            raise _bad(f"Cannot update read-only attribute {readonly[0]}")
        self.check_owner(coll, res, "update")
        self.check_revision(res)
        await getattr(self, "update_" + coll.replace("-", "_"))(res, data)
        _touch(res)
        self.send({KINDS[coll][0]: self.view(coll, res)})

    async def delete(self, rid):
        coll = self.collection
        res = self.find(coll, rid)
        self.check_owner(coll, res, "delete")
        self.check_revision(res)
        await getattr(self, "delete_" + coll.replace("-", "_"))(res)
        self.send(None, status=204)

    # -- updates ---------------------------------------------------------------
    def _simple(self, res, data, keys, bools=()):
        for key in keys:
            if key in data:
                res[key] = _to_bool(data[key], key) if key in bools else copy.deepcopy(data[key])
        if "name" in data and data["name"] is None:
            res["name"] = ""

    async def update_networks(self, res, data):
        if not self.is_admin and ("shared" in data or "router:external" in data or "is_default" in data):
            raise _policy("rule:update_network and rule:update_network:shared")
        if "router:external" in data and not _to_bool(data["router:external"], "router:external") and \
                any(f["floating_network_id"] == res["id"] for f in self.cloud.floating_ips.values()):
            raise APIError(409, f"Unable to complete operation on network {res['id']}. There are one or more "
                                f"floating IPs still in use on the network.", kind="NetworkInUse")
        self._simple(res, data, ("name", "description", "mtu", "admin_state_up", "shared", "router:external",
                                 "port_security_enabled", "is_default", "qos_policy_id"),
                     bools=("admin_state_up", "shared", "router:external", "port_security_enabled", "is_default"))

    async def update_subnets(self, res, data):
        cidr = ipaddress.ip_network(res["cidr"])
        if "gateway_ip" in data and data["gateway_ip"] is not None:
            try:
                gw = ipaddress.ip_address(data["gateway_ip"])
            except ValueError:
                raise _bad(f"Invalid input for gateway_ip. Reason: '{data['gateway_ip']}' is not a valid IP "
                           f"address.")
            if gw not in cidr:
                raise _invalid(f"Gateway IP {gw} conflicts with allocation pool or is outside subnet {cidr}")
        if "allocation_pools" in data:
            data = dict(data, allocation_pools=self._pools(data["allocation_pools"] or [], cidr, None))
        self._simple(res, data, ("name", "description", "gateway_ip", "enable_dhcp", "dns_nameservers",
                                 "host_routes", "allocation_pools", "service_types", "segment_id"),
                     bools=("enable_dhcp",))

    async def update_ports(self, res, data):
        cloud = self.cloud
        if not self.is_admin and ("mac_address" in data or "binding:host_id" in data or "binding:profile" in data):
            raise _policy("rule:update_port and rule:update_port:mac_address")
        if "fixed_ips" in data:
            net = cloud.networks[res["network_id"]]
            res["fixed_ips"] = _allocate_fixed_ips(cloud, net, data["fixed_ips"] or [], exclude_port=res["id"])
            for fip in list(cloud.floating_ips.values()):
                if fip.get("port_id") == res["id"] and \
                        fip["fixed_ip_address"] not in [ip["ip_address"] for ip in res["fixed_ips"]]:
                    await self.disassociate(fip)
        port_security = _to_bool(data.get("port_security_enabled", res["port_security_enabled"]),
                                 "port_security_enabled")
        sgs = res["security_groups"]
        if "security_groups" in data:
            sgs = _validate_security_groups(cloud, data["security_groups"] or [], res["project_id"], self.is_admin)
        if sgs and not port_security:
            raise APIError(409, "Port has security group associated. Cannot disable port security or ip address "
                                "until security group is removed", kind="PortSecurityPortHasSecurityGroup")
        res["security_groups"] = sgs
        self._simple(res, data, ("name", "description", "admin_state_up", "device_id", "device_owner",
                                 "allowed_address_pairs", "extra_dhcp_opts", "port_security_enabled",
                                 "binding:vnic_type", "binding:host_id", "binding:profile", "qos_policy_id",
                                 "mac_address", "propagate_uplink_status"),
                     bools=("admin_state_up", "port_security_enabled", "propagate_uplink_status"))
        res["device_id"] = res["device_id"] or ""
        res["device_owner"] = res["device_owner"] or ""
        res["status"] = _port_status(res)

    async def update_routers(self, res, data):
        cloud = self.cloud
        if "external_gateway_info" in data:
            gw = self._gateway_info(data["external_gateway_info"])
            old = (res.get("external_gateway_info") or {}).get("network_id")
            if old and (gw is None or gw["network_id"] != old) and \
                    any(f.get("router_id") == res["id"] for f in cloud.floating_ips.values()):
                raise APIError(409, f"Gateway cannot be updated for router {res['id']}, since a gateway to external "
                                    f"network {old} is required by one or more floating IPs.",
                               kind="RouterExternalGatewayInUseByFloatingIp")
            res["external_gateway_info"] = gw
        if not self.is_admin and ("distributed" in data or "ha" in data):
            raise _policy("rule:update_router and rule:update_router:distributed")
        if "routes" in data and not isinstance(data["routes"], list):
            raise _bad(f"Invalid input for routes. Reason: Invalid data format for hostroute: '{data['routes']}'.")
        self._simple(res, data, ("name", "description", "admin_state_up", "routes", "distributed", "ha"),
                     bools=("admin_state_up", "distributed", "ha"))

    async def update_security_groups(self, res, data):
        if res["name"] == "default" and "name" in data and data["name"] != "default":
            raise APIError(409, "Updating default security group not allowed.", kind="SecurityGroupCannotUpdateDefault")
        self._simple(res, data, ("name", "description", "stateful"), bools=("stateful",))

    async def update_security_group_rules(self, res, data):
        self._simple(res, data, ("description",))

    async def update_floatingips(self, res, data):
        self._simple(res, data, ("description", "qos_policy_id"))
        if "port_id" in data:
            if data["port_id"]:
                await self.associate(res, data["port_id"], data.get("fixed_ip_address"))
            else:
                await self.disassociate(res)
        elif data.get("fixed_ip_address"):
            if not res.get("port_id"):
                raise APIError(400, "Bad floatingip request: fixed_ip_address cannot be specified without a "
                                    "port_id.", kind="BadRequest")
            await self.associate(res, res["port_id"], data["fixed_ip_address"])

    # -- deletes ---------------------------------------------------------------
    async def delete_networks(self, res):
        cloud = self.cloud
        if any(p["network_id"] == res["id"] and p["device_owner"] != "network:dhcp" for p in cloud.ports.values()) \
                or any(f["floating_network_id"] == res["id"] for f in cloud.floating_ips.values()):
            raise APIError(409, f"Unable to complete operation on network {res['id']}. There are one or more "
                                f"ports still in use on the network.", kind="NetworkInUse")
        if any((r.get("external_gateway_info") or {}).get("network_id") == res["id"]
               for r in cloud.routers.values()):
            raise APIError(409, f"Unable to complete operation on network {res['id']}. There are one or more "
                                f"ports still in use on the network.", kind="NetworkInUse")
        for pid in [p["id"] for p in cloud.ports.values() if p["network_id"] == res["id"]]:
            cloud.ports.pop(pid, None)
        for sid in list(res["subnets"]):
            cloud.subnets.pop(sid, None)
        cloud.networks.pop(res["id"], None)

    async def delete_subnets(self, res):
        cloud = self.cloud
        in_use = any(ip["subnet_id"] == res["id"] for p in cloud.ports.values() if p["device_owner"] != "network:dhcp"
                     for ip in p["fixed_ips"])
        in_use = in_use or any(f.get("_subnet_id") == res["id"] for f in cloud.floating_ips.values())
        if in_use:
            raise APIError(409, f"Unable to complete operation on subnet {res['id']}: One or more ports have an IP "
                                f"allocation from this subnet.", kind="SubnetInUse")
        cloud.subnets.pop(res["id"], None)
        net = cloud.networks.get(res["network_id"])
        if net and res["id"] in net["subnets"]:
            net["subnets"].remove(res["id"])
            _touch(net)
        for router in cloud.routers.values():
            if res["id"] in router["_interfaces"]:
                router["_interfaces"].remove(res["id"])

    async def delete_ports(self, res):
        if res["device_owner"] == "network:router_interface" and res["device_id"] in self.cloud.routers:
            raise APIError(409, f"Port {res['id']} cannot be deleted directly via the port API: has device owner "
                                f"network:router_interface.", kind="ServicePortInUse")
        await delete_port(self.cloud, res["id"])

    async def delete_routers(self, res):
        cloud = self.cloud
        if res["_interfaces"] or any(p["device_id"] == res["id"] and p["device_owner"] == "network:router_interface"
                                     for p in cloud.ports.values()):
            raise APIError(409, f"Router {res['id']} still has ports", kind="RouterInUse")
        cloud.routers.pop(res["id"], None)

    async def delete_security_groups(self, res):
        cloud = self.cloud
        if res["name"] == "default" and not self.is_admin:
            raise APIError(409, "Insufficient rights for removing default security group.",
                           kind="SecurityGroupCannotRemoveDefault")
        if any(res["id"] in p["security_groups"] for p in cloud.ports.values()):
            raise APIError(409, f"Security Group {res['id']} in use.", kind="SecurityGroupInUse")
        for rid in [r["id"] for r in cloud.security_group_rules.values()
                    if r["security_group_id"] == res["id"] or r["remote_group_id"] == res["id"]]:
            rule = cloud.security_group_rules.pop(rid)
            owner = cloud.security_groups.get(rule["security_group_id"])
            if owner is not None and rule in owner["security_group_rules"]:
                owner["security_group_rules"].remove(rule)
        cloud.security_groups.pop(res["id"], None)

    async def delete_security_group_rules(self, res):
        cloud = self.cloud
        cloud.security_group_rules.pop(res["id"], None)
        sg = cloud.security_groups.get(res["security_group_id"])
        if sg is not None:
            sg["security_group_rules"] = [r for r in sg["security_group_rules"] if r["id"] != res["id"]]
            _touch(sg)

    async def delete_floatingips(self, res):
        await self.disassociate(res)
        self.cloud.floating_ips.pop(res["id"], None)


def web_405():
    from tornado import web
    return web.HTTPError(405)


class RouterInterfaceHandler(NeutronHandler):
    async def put(self, router_id, action):
        cloud = self.cloud
        router = self.find("routers", router_id)
        self.check_owner("routers", router, action)
        data = self.body()
        subnet_id, port_id = data.get("subnet_id"), data.get("port_id")
        if subnet_id and port_id:
            raise APIError(400, "Bad router request: Cannot specify both subnet-id and port-id.", kind="BadRequest")
        if not subnet_id and not port_id:
            raise APIError(400, "Bad router request: Either subnet_id or port_id must be specified.",
                           kind="BadRequest")
        if action == "add_router_interface":
            port = self._add(router, subnet_id, port_id)
        else:
            port = self._remove(router, subnet_id, port_id)
        _touch(router)
        subnet_ids = [ip["subnet_id"] for ip in port["fixed_ips"]]
        self.send({"id": router["id"], "tenant_id": router["project_id"], "project_id": router["project_id"],
                   "port_id": port["id"], "network_id": port["network_id"],
                   "subnet_id": subnet_ids[0] if subnet_ids else None, "subnet_ids": subnet_ids})

    def _add(self, router, subnet_id, port_id):
        cloud = self.cloud
        if subnet_id:
            sub = self.find("subnets", subnet_id)
            if not sub.get("gateway_ip"):
                raise APIError(400, "Bad router request: Subnet for router interface must have a gateway IP.",
                               kind="BadRequest")
            if _router_port(cloud, router, sub["id"]) is not None:
                raise APIError(400, f"Bad router request: Router already has a port on subnet {sub['id']}.",
                               kind="BadRequest")
            for p in cloud.ports.values():
                if p["device_id"] == router["id"] and p["network_id"] == sub["network_id"]:
                    raise APIError(400, f"Bad router request: Router already has a port on network "
                                        f"{sub['network_id']}.", kind="BadRequest")
            for other_id in router["_interfaces"]:
                other = cloud.subnets.get(other_id)
                if other and ipaddress.ip_network(other["cidr"]).overlaps(ipaddress.ip_network(sub["cidr"])):
                    raise APIError(400, f"Bad router request: Cidr {sub['cidr']} of subnet {sub['id']} overlaps "
                                        f"with cidr {other['cidr']} of subnet {other['id']}.", kind="BadRequest")
            port = create_port(cloud, router["project_id"],
                               {"network_id": sub["network_id"], "device_owner": "network:router_interface",
                                "device_id": router["id"], "port_security_enabled": False,
                                "fixed_ips": [{"subnet_id": sub["id"], "ip_address": sub["gateway_ip"]}]},
                               is_admin=True)
        else:
            port = self.find("ports", port_id)
            if port["device_id"]:
                raise APIError(409, f"Unable to complete operation on port {port['id']} for network "
                                    f"{port['network_id']}. Port already has an attached device "
                                    f"{port['device_id']}.", kind="PortInUse")
            if not port["fixed_ips"]:
                raise APIError(400, "Bad router request: Router port must have at least one fixed IP.",
                               kind="BadRequest")
            port.update({"device_id": router["id"], "device_owner": "network:router_interface",
                         "security_groups": []})
            port["status"] = _port_status(port)
            _touch(port)
        for ip in port["fixed_ips"]:
            if ip["subnet_id"] not in router["_interfaces"]:
                router["_interfaces"].append(ip["subnet_id"])
        return port

    def _remove(self, router, subnet_id, port_id):
        cloud = self.cloud
        if port_id:
            port = cloud.ports.get(port_id)
            if port is None or port["device_id"] != router["id"] or \
                    port["device_owner"] != "network:router_interface":
                raise APIError(404, f"Router {router['id']} does not have an interface with id {port_id}",
                               kind="RouterInterfaceNotFound")
            if subnet_id and not any(ip["subnet_id"] == subnet_id for ip in port["fixed_ips"]):
                raise APIError(409, f"Subnet {subnet_id} is not associated with port {port_id}",
                               kind="SubnetMismatchForPort")
        else:
            self.find("subnets", subnet_id)
            port = _router_port(cloud, router, subnet_id)
            if port is None:
                raise APIError(404, f"Router {router['id']} has no interface on subnet {subnet_id}",
                               kind="RouterInterfaceNotFoundForSubnet")
        for ip in port["fixed_ips"]:
            for fip in cloud.floating_ips.values():
                fport = cloud.ports.get(fip.get("port_id") or "")
                if fip.get("router_id") == router["id"] and fport is not None and \
                        any(f["subnet_id"] == ip["subnet_id"] for f in fport["fixed_ips"]):
                    raise APIError(409, f"Router interface for subnet {ip['subnet_id']} on router {router['id']} "
                                        f"cannot be deleted, as it is required by one or more floating IPs.",
                                   kind="RouterInterfaceInUseByFloatingIP")
        cloud.ports.pop(port["id"], None)
        for ip in port["fixed_ips"]:
            if ip["subnet_id"] in router["_interfaces"]:
                router["_interfaces"].remove(ip["subnet_id"])
        return port


class TagsHandler(NeutronHandler):
    def _res(self, rid):
        res = self.find(self.collection, rid)
        return res

    def get(self, rid, tag=None):
        res = self._res(rid)
        if tag is None:
            return self.send({"tags": list(res.get("tags", []))})
        if tag not in res.get("tags", []):
            raise self._tag_missing(rid, tag)
        self.send(None, status=204)

    def _tag_missing(self, rid, tag):
        return APIError(404, f"Tag {tag} could not be found for {KINDS[self.collection][0]} {rid}.",
                        kind="TagNotFound")

    def put(self, rid, tag=None):
        res = self._res(rid)
        self.check_owner(self.collection, res, "update")
        if tag is None:
            tags = self._tags_body()
            res["tags"] = sorted(set(tags))
            _touch(res)
            return self.send({"tags": list(res["tags"])})
        if len(tag) > 255:
            raise _bad(f"Invalid input for tag. Reason: '{tag[:20]}...' exceeds maximum length of 255.")
        if tag not in res["tags"]:
            # Neutron lists tags in the order of its (resource, tag) key: sorted
            res["tags"] = sorted(res["tags"] + [tag])
            _touch(res)
        self.send(None, status=201)

    def post(self, rid, tag=None):
        """Bulk tag add (the ``tag-creation`` extension): the tags not there yet are added, none removed."""
        if tag is not None:
            raise web_405()
        res = self._res(rid)
        self.check_owner(self.collection, res, "update")
        tags = self._tags_body()
        if not set(tags) <= set(res["tags"]):
            res["tags"] = sorted(set(res["tags"]) | set(tags))
            _touch(res)
        self.send({"tags": tags}, status=201)

    def _tags_body(self):
        body = self.body()
        if "tags" not in body:
            raise _bad("Invalid tags body", kind="InvalidInput")
        tags = body["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) and 0 < len(t) <= 255 for t in tags):
            raise _bad(f"Invalid input for operation: '{tags}' is not a valid list of tags.", kind="InvalidInput")
        dupes = sorted({t for t in tags if tags.count(t) > 1})
        if dupes:
            raise _bad(f"Invalid input for operation: Duplicate items in the list: '{', '.join(dupes)}'.",
                       kind="InvalidInput")
        return tags

    def delete(self, rid, tag=None):
        res = self._res(rid)
        self.check_owner(self.collection, res, "update")
        if tag is None:
            res["tags"] = []
        elif tag in res["tags"]:
            res["tags"].remove(tag)
        else:
            raise self._tag_missing(rid, tag)
        _touch(res)
        self.send(None, status=204)


class QuotasHandler(NeutronHandler):
    def _project(self, project_id):
        if project_id in ("tenant", "project"):
            return None
        if project_id != self.project_id and not self.is_admin:
            raise APIError(403, "Only admin is authorized to access quotas for another tenant",
                           kind="HTTPForbidden")
        return project_id

    def get(self, project_id=None, what=None):
        cloud = self.cloud
        if project_id is None:
            if not self.is_admin:
                raise _policy("rule:get_quota")
            return self.send({"quotas": []})
        if project_id == "tenant":
            return self.send({"tenant": {"tenant_id": self.project_id}})
        if project_id == "project":
            return self.send({"project": {"project_id": self.project_id}})
        self._project(project_id)
        if what == "details":
            usage = cloud.usage(project_id)
            return self.send({"quota": {k: {"limit": cloud.quota(k), "used": usage.get(k, 0), "reserved": 0}
                                        for k in NEUTRON_QUOTAS}})
        self.send({"quota": {k: cloud.quota(k) for k in NEUTRON_QUOTAS}})

    def put(self, project_id=None, what=None):
        if project_id is None or what is not None:
            raise web_405()
        if not self.is_admin:
            raise _policy("rule:update_quota")
        data = self.body().get("quota")
        if not isinstance(data, dict):
            raise _bad("Unable to find 'quota' in request body")
        for k, v in data.items():
            if k not in NEUTRON_QUOTAS:
                raise _bad(f"Unrecognized attribute(s) '{k}'")
            try:
                v = int(v)
            except (TypeError, ValueError):
                raise _bad(f"Invalid input for {k}. Reason: '{v}' is not an integer.")
            if v < -1:
                raise _bad(f"Invalid input for {k}. Reason: '{v}' is too small - must be at least '-1'.")
            # the local cloud's quotas apply to every project alike
            self.cloud.config.data["quotas"][k] = v
        self.send({"quota": {k: self.cloud.quota(k) for k in NEUTRON_QUOTAS}})

    def delete(self, project_id=None, what=None):
        if project_id is None or what is not None:
            raise web_405()
        if not self.is_admin:
            raise _policy("rule:delete_quota")
        self.send(None, status=204)


def routes(cloud):
    ensure_router_ports(cloud)
    a = {"cloud": cloud}
    j = r"(?:\.json)?"
    out = [
        (rf"{PREFIX}/?", VersionsHandler, a),
        (rf"{V2}/?", V2Handler, a),
        (rf"{V2}/extensions{j}/?", ExtensionsHandler, a),
        (rf"{V2}/extensions/([^/]+?){j}/?", ExtensionsHandler, a),
        (rf"{V2}/availability_zones{j}/?", AvailabilityZonesHandler, a),
        (rf"{V2}/quotas{j}/?", QuotasHandler, a),
        (rf"{V2}/quotas/([^/]+?)/(details|default){j}/?", QuotasHandler, a),
        (rf"{V2}/quotas/([^/]+?){j}/?", QuotasHandler, a),
        (rf"{V2}/routers/([^/]+)/(add_router_interface|remove_router_interface){j}/?", RouterInterfaceHandler, a),
    ]
    for coll in TAGGABLE:
        args = {"cloud": cloud, "collection": coll}
        out += [(rf"{V2}/{re.escape(coll)}/([^/]+)/tags/?", TagsHandler, args),
                (rf"{V2}/{re.escape(coll)}/([^/]+)/tags/([^/]+)/?", TagsHandler, args)]
    for coll in KINDS:
        args = {"cloud": cloud, "collection": coll}
        out += [(rf"{V2}/{re.escape(coll)}{j}/?", CollectionHandler, args),
                (rf"{V2}/{re.escape(coll)}/([^/]+?){j}/?", ItemHandler, args)]
    return out
