// The jitgate console's only script (the CSP allows no other): keeps "time left" countdowns
// current, and reloads the page when what it shows has changed on the server, unless the
// person is in the middle of typing into a form, where it offers a reload instead.
(function () {
  "use strict";

  var POLL_MS = 2000;

  // The same words the server writes: "1h 12m left", "4m 10s left", "2d 3h left".
  function leftText(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s === 0) return "ended";
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d > 0) return d + "d " + h + "h left";
    if (h > 0) return h + "h " + m + "m left";
    if (m > 0) return m + "m " + (s % 60) + "s left";
    return s + "s left";
  }

  function countDown() {
    var now = Date.now();
    document.querySelectorAll("[data-expires]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("data-expires"));
      if (!isNaN(at)) el.textContent = leftText(at - now);
    });
  }

  // Typing: a focused field with something in it, or any text field changed from how the
  // page came. A reload would lose either.
  function typing() {
    var el = document.activeElement;
    if (el && /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName) && el.type !== "hidden" && el.value) return true;
    var fields = document.querySelectorAll("input[type=text], input[type=password], textarea");
    for (var i = 0; i < fields.length; i++) {
      if (fields[i].value !== fields[i].defaultValue) return true;
    }
    return false;
  }

  function offerReload(live, page) {
    if (live.firstChild) return;
    var p = document.createElement("p");
    p.className = "notice updated";
    p.setAttribute("role", "status");
    p.appendChild(document.createTextNode("This page has changed. "));
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = "Reload";
    button.addEventListener("click", function () { location.replace(page); });
    p.appendChild(button);
    live.appendChild(p);
  }

  function watch(live) {
    var url = live.getAttribute("data-poll");
    var seen = live.getAttribute("data-v");
    // Reload the page itself, not a URL a form was posted to, and without its one-time notice.
    var page = live.getAttribute("data-page") || location.pathname;
    var busy = false;
    function check() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (body) {
          if (!body || typeof body.v !== "string" || body.v === seen) return;
          if (typing()) offerReload(live, page);
          else location.replace(page);
        })
        .catch(function () { /* the next round tries again */ })
        .then(function () { busy = false; });
    }
    setInterval(check, POLL_MS);
  }

  function start() {
    countDown();
    setInterval(countDown, 1000);
    var live = document.getElementById("live");
    if (live && live.getAttribute("data-poll")) watch(live);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
