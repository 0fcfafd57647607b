"""The options form: flavor and image choices, checked against image needs and quota."""
import json
from html import escape

from jupyterhub.spawner import SpawnException


def _fits(flavor, image):
    return flavor["ram"] >= (image.get("min_ram") or 0) and flavor["disk"] >= (image.get("min_disk") or 0)


class OptionsForm:
    def __init__(self, spawner):
        self.spawner = spawner
        self.lc = spawner.lifecycle

    async def choices(self):
        sp = self.spawner
        if sp.flavor_choices:
            flavors = [await self.lc.flavor(n) for n in sp.flavor_choices]
        else:
            flavors = sorted(await self.lc.flavors(), key=lambda f: (f["vcpus"], f["ram"], f["name"]))
        names = list(sp.image_choices) or ([sp.image] if sp.image else [])
        if not names:
            raise SpawnException("OpenStackSpawner is not configured: set c.OpenStackSpawner.image "
                                 "or c.OpenStackSpawner.image_choices.", reason="config")
        images = [await self.lc.image(n) for n in names]
        return flavors, images

    async def render(self):
        sp = self.spawner
        flavors, images = await self.choices()
        if not sp.enable_options_form or (len(flavors) <= 1 and len(images) <= 1):
            return ""
        try:
            limits = await self.lc.limits()
        except Exception:  # noqa: BLE001 - the form still works without the quota line
            limits = None
        default_image = next((i for i in images if i["name"] == sp.image or i["id"] == sp.image), images[0])
        rows = []
        if limits:
            (iu, im), (cu, cm), (ru, rm) = limits["instances"], limits["cores"], limits["ram"]

            def left(used, limit):
                return "unlimited" if limit is None or limit < 0 else str(max(limit - used, 0))
            rows.append(
                f'<p class="help-block" id="openstack-quota">Remaining in the project: {left(iu, im)} servers, '
                f"{left(cu, cm)} vCPUs, {escape(left(ru, rm))} MiB RAM.</p>")
        rows.append('<div class="form-group"><label for="openstack-image">Image</label>'
                    '<select class="form-control" name="image" id="openstack-image">')
        for im in images:
            sel = " selected" if im is default_image else ""
            rows.append(f'<option value="{escape(im["name"])}" data-min-ram="{int(im["min_ram"])}" '
                        f'data-min-disk="{int(im["min_disk"])}"{sel}>{escape(im["name"])}</option>')
        rows.append('</select></div><div class="form-group"><label for="openstack-flavor">Flavor</label>'
                    '<select class="form-control" name="flavor" id="openstack-flavor">')
        default_flavor = sp.flavor
        chosen = False
        for f in flavors:
            fits = _fits(f, default_image)
            sel = ""
            if fits and not chosen and (f["name"] == default_flavor or f["id"] == default_flavor or not default_flavor):
                sel, chosen = " selected", True
            disabled = "" if fits else " disabled"
            why = "" if fits else " (too small for this image)"
            rows.append(f'<option value="{escape(f["name"])}" data-ram="{int(f["ram"])}" data-disk="{int(f["disk"])}"'
                        f'{sel}{disabled}>{escape(f["name"])}: {int(f["vcpus"])} vCPU, {int(f["ram"])} MiB RAM, '
                        f'{int(f["disk"])} GB disk{why}</option>')
        rows.append("</select></div>")
        # re-evaluates which flavors fit when another image is picked; server-side validation still decides
        rows.append("""<script>
(function () {
  var im = document.getElementById("openstack-image"), fl = document.getElementById("openstack-flavor");
  function update() {
    var o = im.options[im.selectedIndex], r = +o.dataset.minRam, d = +o.dataset.minDisk;
    for (var i = 0; i < fl.options.length; i++) {
      var f = fl.options[i], ok = (+f.dataset.ram >= r) && (+f.dataset.disk >= d);
      f.disabled = !ok;
      if (!ok && f.selected) { f.selected = false; }
    }
  }
  im.addEventListener("change", update);
})();
</script>""")
        return "\n".join(rows)

    @staticmethod
    def parse(formdata):
        out = {}
        for key in ("flavor", "image"):
            values = formdata.get(key)
            if values:
                out[key] = values[0] if isinstance(values, list) else values
        return out

    async def validate(self, options):
        sp = self.spawner
        flavors, images = await self.choices()
        image_name = options.get("image") or sp.image or images[0]["name"]
        image = next((i for i in images if image_name in (i["name"], i["id"])), None)
        if image is None:
            raise SpawnException(f"The image {image_name!r} is not offered on this hub. Choose one of: "
                                 f"{', '.join(i['name'] for i in images)}.", reason="options")
        flavor_name = options.get("flavor") or sp.flavor
        if not flavor_name:
            fitting = [f for f in flavors if _fits(f, image)]
            if not fitting:
                raise SpawnException(f"No offered flavor is big enough for the image {image['name']}.",
                                     reason="options")
            return fitting[0], image
        flavor = next((f for f in flavors if flavor_name in (f["name"], f["id"])), None)
        if flavor is None:
            raise SpawnException(f"The flavor {flavor_name!r} is not offered on this hub. Choose one of: "
                                 f"{', '.join(f['name'] for f in flavors)}.", reason="options")
        if not _fits(flavor, image):
            raise SpawnException(
                f"The image {image['name']} needs at least {image['min_ram']} MiB RAM and {image['min_disk']} GB "
                f"disk; the flavor {flavor['name']} has {flavor['ram']} MiB and {flavor['disk']} GB. "
                "Choose a bigger flavor.", reason="options")
        return flavor, image

    @staticmethod
    def describe(options):
        return json.dumps(options, sort_keys=True)
