"""The options form: flavor and image choices, or the operator's profiles, checked against image needs and the
remaining quota."""
import asyncio
import json
import logging
import os
from html import escape

import jinja2
from jupyterhub.spawner import SpawnException

from . import profiles
from .cloud import CloudError
from .messages import clip

log = logging.getLogger("jhub_broker.spawner.options")


def _fits(flavor, image):
    return flavor["ram"] >= (image.get("min_ram") or 0) and flavor["disk"] >= (image.get("min_disk") or 0)


def remaining(limits):
    """What is left of each quota ({"instances", "cores", "ram", "gigabytes"}); None: unlimited or unknown."""
    out = {}
    for key in ("instances", "cores", "ram", "gigabytes"):
        used, limit = (limits or {}).get(key) or (None, None)
        out[key] = None if limit is None or limit < 0 else max(limit - (used or 0), 0)
    return out


def over_quota(flavor, left, new_volume_gb=0):
    """Why ``flavor`` does not fit the remaining quota (a list of reasons; empty when it fits)."""
    reasons = []
    if left["instances"] is not None and left["instances"] < 1:
        reasons.append(f"{left['instances']} servers left")
    if left["cores"] is not None and flavor["vcpus"] > left["cores"]:
        reasons.append(f"needs {int(flavor['vcpus'])} vCPUs, {left['cores']} left")
    if left["ram"] is not None and flavor["ram"] > left["ram"]:
        reasons.append(f"needs {int(flavor['ram'])} MiB RAM, {left['ram']} MiB left")
    if new_volume_gb and left["gigabytes"] is not None and new_volume_gb > left["gigabytes"]:
        reasons.append(f"a new {new_volume_gb} GB data volume needs {new_volume_gb} GB, {left['gigabytes']} GB left")
    return reasons


def quota_text(left, new_volume_gb):
    def show(value, unit):
        return "unlimited " + unit if value is None else f"{value} {unit}"
    volume = f", {show(left['gigabytes'], 'GB of volumes')}" if new_volume_gb else ""
    return (f'Remaining in the project: {show(left["instances"], "servers")}, {show(left["cores"], "vCPUs")}, '
            f'{show(left["ram"], "MiB RAM")}{volume}.')


def _mib(mib):
    return f"{mib / 1024:g} GiB" if mib >= 1024 and mib % 128 == 0 else f"{int(mib)} MiB"


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(os.path.dirname(__file__)), "templates")),
    autoescape=True, undefined=jinja2.StrictUndefined)


def _quoted(value):
    """A value the user sent, fit to echo: clipped, without control characters."""
    return repr(clip(value, 60))


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

    async def _new_volume_gb(self):
        """GB of the data volume this spawn would create (0 when the user's volume exists or none is used)."""
        sp = self.spawner
        if sp.volume_size <= 0:
            return 0
        return 0 if await self.lc.find_volume(sp.volume_id, sp._volume_name()) else sp.volume_size

    async def quota(self):
        """(remaining quota, GB of a new volume), or (None, 0) when the cloud does not say."""
        try:
            limits, new_volume_gb = await asyncio.gather(self.lc.limits(), self._new_volume_gb())
            return remaining(limits), new_volume_gb
        except Exception as e:  # noqa: BLE001 - without numbers the cloud itself enforces its quota
            log.warning("could not read the project's quota: %s", e)
            return None, 0

    async def render(self):
        sp = self.spawner
        if profiles.configured(sp):
            return await self.render_profiles() if sp.enable_options_form else ""
        flavors, images = await self.choices()
        if not sp.enable_options_form or (len(flavors) <= 1 and len(images) <= 1):
            return ""
        left, new_volume_gb = await self.quota()
        default_image = next((i for i in images if i["name"] == sp.image or i["id"] == sp.image), images[0])
        rows = []
        if left:
            rows.append(f'<p class="help-block" id="openstack-quota">{quota_text(left, new_volume_gb)}</p>')
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
            over = over_quota(f, left, new_volume_gb) if left else []
            fits = _fits(f, default_image)
            sel = ""
            if fits and not over and not chosen and (
                    f["name"] == default_flavor or f["id"] == default_flavor or not default_flavor):
                sel, chosen = " selected", True
            disabled = "" if fits and not over else " disabled"
            why = "" if fits else " (too small for this image)"
            if over:
                why += f" (over the remaining quota: {'; '.join(over)})"
            quota_attr = ' data-over-quota="1"' if over else ""
            rows.append(f'<option value="{escape(f["name"])}" data-ram="{int(f["ram"])}" data-disk="{int(f["disk"])}"'
                        f'{quota_attr}{sel}{disabled}>{escape(f["name"])}: {int(f["vcpus"])} vCPU, {int(f["ram"])} '
                        f'MiB RAM, {int(f["disk"])} GB disk{escape(why)}</option>')
        rows.append("</select></div>")
        # re-evaluates which flavors fit when another image is picked; server-side validation still decides
        rows.append("""<script>
(function () {
  var im = document.getElementById("openstack-image"), fl = document.getElementById("openstack-flavor");
  function update() {
    var o = im.options[im.selectedIndex], r = +o.dataset.minRam, d = +o.dataset.minDisk;
    for (var i = 0; i < fl.options.length; i++) {
      var f = fl.options[i], ok = (+f.dataset.ram >= r) && (+f.dataset.disk >= d) && !f.dataset.overQuota;
      f.disabled = !ok;
      if (!ok && f.selected) { f.selected = false; }
    }
  }
  im.addEventListener("change", update);
})();
</script>""")
        return "\n".join(rows)

    async def render_profiles(self):
        """One radio card per profile the user may use: what it gives, what it costs; dedicated profiles whose
        flavor does not fit the image or the remaining quota are shown disabled, with the reason."""
        sp = self.spawner
        allowed = await profiles.allowed_profiles(sp)
        left, new_volume_gb = (None, 0)
        if any(p.placement == "dedicated" for p in allowed):
            left, new_volume_gb = await self.quota()
        cards = []
        for p in allowed:
            card = {"slug": p.slug, "display_name": p.display_name, "description": p.description,
                    "placement": "own VM" if p.placement == "dedicated" else "shared host",
                    "cost": f"{p.credits_per_day:g} credits per day" if p.credits_per_day is not None else "",
                    "disabled": False, "why": "", "checked": False}
            if p.placement == "dedicated":
                try:
                    flavor, image = await asyncio.gather(self.lc.flavor(p.flavor), self.lc.image(p.image))
                except CloudError as e:
                    card.update(gives=f"Flavor {p.flavor}, image {p.image}", disabled=True,
                                why=f"Not available: {clip(e.message)} Tell the hub's administrators.")
                else:
                    card["gives"] = (f"{int(flavor['vcpus'])} vCPU, {_mib(flavor['ram'])} RAM, {int(flavor['disk'])}"
                                     f" GB disk (flavor {flavor['name']}), image {image['name']}")
                    over = over_quota(flavor, left, new_volume_gb) if left else []
                    if not _fits(flavor, image):
                        card.update(disabled=True, why="Not available: the flavor is too small for this image. "
                                                       "Tell the hub's administrators.")
                    elif over:
                        card.update(disabled=True, why=f"Over the remaining quota: {'; '.join(over)}.")
            else:
                card["gives"] = (f"{p.cpu_limit:g} vCPU, {_mib(p.mem_limit / 2**20)} RAM (limits), "
                                 f"container image {p.image}")
            cards.append(card)
        usable = [c for c in cards if not c["disabled"]]
        previous = (sp.user_options or {}).get("profile")
        default = next((c for c in usable if c["slug"] == previous), usable[0] if usable else None)
        if default:
            default["checked"] = True
        return _templates.get_template("openstack/profiles_form.html.j2").render(
            cards=cards, quota=quota_text(left, new_volume_gb) if left else "")

    @staticmethod
    def parse(formdata):
        out = {}
        for key in ("flavor", "image", "profile"):
            values = formdata.get(key)
            if values:
                out[key] = values[0] if isinstance(values, list) else values
        return out

    async def validate(self, options, profile=None):
        """(flavor, image) of this start; with a dedicated ``profile``, the profile's."""
        sp = self.spawner
        if profile is not None and profile.placement != "dedicated":
            # shared profiles are placed by the pool, before this point; reaching here is a wiring mistake
            raise SpawnException(f"The profile {profile.slug!r} runs on a shared host, which this hub cannot "
                                 "place: tell the hub's administrators.", reason="config")
        if profile is not None:
            flavors = [await self.lc.flavor(profile.flavor)]
            images = [await self.lc.image(profile.image)]
            options = {"flavor": profile.flavor, "image": profile.image}
        else:
            flavors, images = await self.choices()
        image_name = options.get("image") or sp.image or images[0]["name"]
        image = next((i for i in images if image_name in (i["name"], i["id"])), None)
        if image is None:
            raise SpawnException(f"The image {_quoted(image_name)} is not offered on this hub. Choose one of: "
                                 f"{', '.join(i['name'] for i in images)}.", reason="options")
        flavor_name = options.get("flavor") or sp.flavor
        if not flavor_name:
            fitting = [f for f in flavors if _fits(f, image)]
            if not fitting:
                raise SpawnException(f"No offered flavor is big enough for the image {image['name']}.",
                                     reason="options")
            flavor = fitting[0]
        else:
            flavor = next((f for f in flavors if flavor_name in (f["name"], f["id"])), None)
        if flavor is None:
            raise SpawnException(f"The flavor {_quoted(flavor_name)} is not offered on this hub. Choose one of: "
                                 f"{', '.join(f['name'] for f in flavors)}.", reason="options")
        if not _fits(flavor, image):
            raise SpawnException(
                f"The image {image['name']} needs at least {image['min_ram']} MiB RAM and {image['min_disk']} GB "
                f"disk; the flavor {flavor['name']} has {flavor['ram']} MiB and {flavor['disk']} GB. "
                "Choose a bigger flavor.", reason="options")
        left, new_volume_gb = await self.quota()
        over = over_quota(flavor, left, new_volume_gb) if left else []
        if over:
            fitting = [f["name"] for f in flavors if _fits(f, image) and not over_quota(f, left, new_volume_gb)]
            hint = ("Choose another profile or stop one of your other servers." if profile is not None else
                    f"Choose a smaller flavor ({', '.join(fitting)} fit{'s' if len(fitting) == 1 else ''}) "
                    "or stop one of your other servers." if fitting else
                    "No offered flavor fits: stop one of your other servers or ask the project's manager "
                    "for more quota.")
            raise SpawnException(f"The flavor {flavor['name']} does not fit the project's remaining quota: "
                                 f"{'; '.join(over)}. {hint}", reason="quota")
        return flavor, image

    @staticmethod
    def describe(options):
        return json.dumps(options, sort_keys=True)
