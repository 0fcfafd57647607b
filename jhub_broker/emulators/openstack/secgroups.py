"""Security-group enforcement: what a VM lets in, as the allow-list its bind shim reads.

VMs share the host's loopback, so the enforcement point is inside each VM: the shim (vm/bindshim.c)
wraps accept() and closes, with a reset, every connection to the VM's fixed IP whose source address
no ingress rule of the VM's security groups allows. The cloud keeps the list in the VM's private
``/etc/jhub-broker/ingress`` (owned by the VM's root, like a real VM's own firewall) and rewrites it
whenever a request may have changed groups, rules or ports, so a rule change applies to the next
connection without a reboot.  Egress is not enforced.

One line per allowed (source, port range): ``<network>/<prefix> <port_min> <port_max>``; a line ``*``
allows everything (a port without port security).  The VM's own address is always allowed.
"""
import ipaddress

ALLOW_ALL = "*"
GUEST_PATH = "/etc/jhub-broker/ingress"


def _tcp(rule):
    return rule.get("protocol") in (None, "tcp", "6", 6, "any")


def _members(cloud, group_id):
    """The IPv4 fixed addresses of every port in the group (a rule's ``remote_group_id``)."""
    out = []
    for port in cloud.ports.values():
        if group_id in (port.get("security_groups") or []):
            out += [f["ip_address"] for f in port.get("fixed_ips") or [] if "." in f["ip_address"]]
    return out


def allow_lines(cloud, server_id):
    """The allow-list of a server's VM, or None when the server has no Neutron port (nothing to filter
    on: only the VM runner's tests make such servers)."""
    ports = [p for p in cloud.ports.values() if p.get("device_id") == server_id]
    if not ports:
        return None
    if any(not p.get("port_security_enabled", True) for p in ports):
        return [ALLOW_ALL]
    lines = []
    group_ids = []
    for p in ports:
        group_ids += [g for g in p.get("security_groups") or [] if g not in group_ids]
    for gid in group_ids:
        group = cloud.security_groups.get(gid)
        for rule in (group or {}).get("security_group_rules", []):
            if rule.get("direction") != "ingress" or rule.get("ethertype", "IPv4") != "IPv4" or not _tcp(rule):
                continue
            low = rule.get("port_range_min") or 1
            high = rule.get("port_range_max") or (rule.get("port_range_min") or 65535)
            if rule.get("remote_group_id"):
                sources = [f"{ip}/32" for ip in _members(cloud, rule["remote_group_id"])]
            else:
                sources = [str(ipaddress.ip_network(rule.get("remote_ip_prefix") or "0.0.0.0/0", strict=False))]
            for source in sources:
                line = f"{source} {int(low)} {int(high)}"
                if line not in lines:
                    lines.append(line)
    return lines


def render(lines):
    if lines is None:
        return ALLOW_ALL + "\n"
    return "".join(line + "\n" for line in lines)
