// Live build log (server-sent events) and delete confirmations. No inline scripts (CSP).
(function () {
  "use strict";
  var pre = document.getElementById("build-log");
  function show(link) {
    if (!pre) return;
    pre.textContent = "";
    if (link.dataset.active !== "yes") {
      fetch(link.href, {credentials: "same-origin"}).then(function (r) { return r.text(); })
        .then(function (t) { pre.textContent = t; });
      return;
    }
    var es = new EventSource(link.dataset.stream);
    es.onmessage = function (e) { pre.textContent += e.data + "\n"; pre.scrollTop = pre.scrollHeight; };
    es.addEventListener("done", function () { es.close(); setTimeout(function () { location.reload(); }, 800); });
    es.onerror = function () { es.close(); };
  }
  var links = document.querySelectorAll("a.log-link");
  links.forEach(function (a) {
    a.addEventListener("click", function (ev) { ev.preventDefault(); show(a); });
  });
  if (links.length) show(links[0]);
  document.querySelectorAll("form.confirm").forEach(function (f) {
    f.addEventListener("submit", function (ev) { if (!confirm(f.dataset.confirm)) ev.preventDefault(); });
  });
})();
