"""Nova's legacy ``/extensions`` list (``GET /compute/v2.1/extensions[/{alias}]``).

Nova v2.1 still answers it with a fixed list of the v2 extension names its API covers; this one names
those whose API the local cloud has.
"""
from .web import APIError

_NAMESPACE = "http://docs.openstack.org/compute/ext/fake_xml"
_UPDATED = "2014-12-03T00:00:00Z"
EXTENSIONS = [
    ("NMN", "Multinic", "Multiple network support."),
    ("OS-DCF", "DiskConfig", "Disk Management Extension."),
    ("OS-EXT-AZ", "ExtendedAvailabilityZone", "Extended Availability Zone support."),
    ("OS-EXT-IMG-SIZE", "ImageSize", "Adds image size to image listings."),
    ("OS-EXT-IPS", "ExtendedIps", "Adds type parameter to the ip list."),
    ("OS-EXT-IPS-MAC", "ExtendedIpsMac", "Adds mac address parameter to the ip list."),
    ("OS-EXT-SRV-ATTR", "ExtendedServerAttributes", "Extended Server Attributes support."),
    ("OS-EXT-STS", "ExtendedStatus", "Extended Status support."),
    ("OS-FLV-DISABLED", "FlavorDisabled", "Support to show the disabled status of a flavor."),
    ("OS-FLV-EXT-DATA", "FlavorExtraData", "Provide additional data for flavors."),
    ("OS-SRV-USG", "ServerUsage", "Adds launched_at and terminated_at on Servers."),
    ("os-attach-interfaces", "AttachInterfaces", "Attach interface support."),
    ("os-availability-zone", "AvailabilityZone", "1. Add availability_zone to the Create Server API.\n"
                                                 "2. Add availability zones describing.\n"),
    ("os-block-device-mapping", "BlockDeviceMapping", "Block device mapping boot support."),
    ("os-block-device-mapping-v2-boot", "BlockDeviceMappingV2Boot", "Allow boot with the new BDM data format."),
    ("os-console-output", "ConsoleOutput", "Console log output support, with tailing ability."),
    ("os-create-server-ext", "Createserverext", ""),
    ("os-extended-quotas", "ExtendedQuotas", "Adds ability for admins to delete quota and optionally force "
                                             "the update Quota command."),
    ("os-extended-volumes", "ExtendedVolumes", "Extended Volumes support."),
    ("os-flavor-extra-specs", "FlavorExtraSpecs", "Flavors extra specs support."),
    ("os-flavor-swap", "FlavorSwap", ""),
    ("os-keypairs", "Keypairs", "Keypair Support."),
    ("os-quota-sets", "Quotas", "Quotas management support."),
    ("os-security-groups", "SecurityGroups", "Security group support."),
    ("os-server-list-multi-status", "ServerListMultiStatus", ""),
    ("os-server-sort-keys", "ServerSortKeys", ""),
    ("os-server-start-stop", "ServerStartStop", "Start/Stop instance compute API support."),
    ("os-used-limits", "UsedLimits", "Provide data on limited resources that are being used."),
    ("os-user-data", "UserData", "Add user_data to the Create Server API."),
    ("os-volume-attachment-update", "VolumeAttachmentUpdate", ""),
    ("os-volumes", "Volumes", "Volumes support."),
]


def _view(alias, name, description):
    return {"alias": alias, "name": name, "description": description, "namespace": _NAMESPACE,
            "updated": _UPDATED, "links": []}


def handler_class(base):
    """The handler, on the Nova base handler (passed in: nova.py imports this module)."""
    class ExtensionsHandler(base):
        def get(self, alias=None):
            if alias is None:
                return self.send({"extensions": [_view(*e) for e in EXTENSIONS]})
            for entry in EXTENSIONS:
                if entry[0] == alias:
                    return self.send({"extension": _view(*entry)})
            raise APIError(404, "The resource could not be found.")
    return ExtensionsHandler
