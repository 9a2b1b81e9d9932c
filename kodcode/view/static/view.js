// kodcode view: live updates without reloading the page.
// Every few seconds, ask the server for the current page's fragment, telling it which store version and
// fragment this page shows; it answers 204 when nothing changed, else the fragment it rendered (escaped on
// the server). Open <details> stay open across a swap. No other script runs on these pages.
(function () {
  "use strict";
  var main = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!main) return;
  var version = main.dataset.version || "";
  var hash = main.dataset.hash || "";
  var period = parseInt(main.dataset.refreshMs || "2000", 10);
  var updates = 0;
  // A filter or diff form the user has started to change must not be replaced under them: swaps wait.
  var editing = false;
  main.addEventListener("input", function () { editing = true; });
  main.addEventListener("change", function () { editing = true; });

  function show(text, cls) {
    if (!status) return;
    status.textContent = text;
    status.className = "live-status " + cls;
  }

  function clock() {
    return new Date().toLocaleTimeString();
  }

  function poll() {
    if (editing) show("paused while you edit", "idle");
    if (document.hidden || editing) return setTimeout(poll, period);
    fetch(location.href, {headers: {"X-Kodcode-Live": version + " " + hash}, cache: "no-store"})
      .then(function (response) {
        if (editing) return;
        version = response.headers.get("X-Kodcode-Version") || version;
        if (response.status === 200) {
          hash = response.headers.get("X-Kodcode-Hash") || hash;
          return response.text().then(function (html) {
            var open = Array.prototype.map.call(main.querySelectorAll("details[id][open]"), function (d) { return d.id; });
            main.innerHTML = html;
            open.forEach(function (id) { var d = document.getElementById(id); if (d) d.open = true; });
            updates += 1;
            main.dataset.updates = String(updates);
            show("live · updated " + clock(), "live");
          });
        }
        if (response.status === 204) { show("live · checked " + clock(), "live"); return; }
        show("store unavailable (" + response.status + ")", "down");
      })
      .catch(function () { show("view server unreachable", "down"); })
      .then(function () { setTimeout(poll, period); });
  }

  show("live", "live");
  setTimeout(poll, period);
})();
