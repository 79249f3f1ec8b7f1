"use strict";
/* medfed web app: streams federated search results (server-sent events, HTML fragments
   rendered by the server) and runs fetch/download jobs with progress. No libraries. */
(function () {
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function startSearch(form) {
    var strip = document.getElementById("strip");
    var results = document.getElementById("results");
    var status = document.getElementById("search-status");
    var button = document.getElementById("search-button");
    var params = new URLSearchParams(new FormData(form));
    Array.from(params.keys()).forEach(function (k) { if (!params.get(k)) params.delete(k); });
    history.replaceState(null, "", "/search?" + params.toString());
    if (form._source) form._source.close();
    button.disabled = true;
    status.textContent = "Asking the sites\u2026";
    document.body.dataset.search = "running";
    var finished = false;
    var source = new EventSource("/api/search?" + params.toString());
    form._source = source;
    function apply(doc) {
      strip.innerHTML = doc.strip;
      results.innerHTML = doc.results;
    }
    function end(text, state) {
      finished = true;
      source.close();
      button.disabled = false;
      status.textContent = text;
      document.body.dataset.search = state;
    }
    source.addEventListener("update", function (e) {
      var doc = JSON.parse(e.data);
      apply(doc);
      var waiting = strip.querySelectorAll('[data-status="waiting"]').length;
      status.textContent = waiting ? waiting + " site(s) still answering\u2026" : "Merging\u2026";
    });
    source.addEventListener("done", function (e) {
      apply(JSON.parse(e.data));
      end("Search complete.", "done");
    });
    source.addEventListener("failed", function (e) {
      var doc = JSON.parse(e.data);
      results.innerHTML = "";
      var box = document.createElement("div");
      box.className = "alert alert-error";
      box.setAttribute("role", "alert");
      box.textContent = doc.reason;
      results.appendChild(box);
      end("Search failed.", "failed");
    });
    source.onerror = function () {
      if (!finished) end("The connection to this node was lost; search again.", "failed");
    };
  }

  function runJob(button) {
    var cell = button.closest(".actions-cell");
    var out = cell.querySelector(".job");
    var body = { action: button.dataset.action, ref: button.dataset.ref,
                 format: button.dataset.format || "", destination: button.dataset.destination || "",
                 total: parseInt(button.dataset.total || "0", 10),
                 purpose: (document.getElementById("purpose") || {}).value || "" };
    cell.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    out.innerHTML = '<span class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="100"><span></span></span> <span class="jtext">starting\u2026</span>';
    var bar = out.querySelector(".progress > span");
    var text = out.querySelector(".jtext");
    function done(msg, ok) {
      text.textContent = msg;
      text.className = "jtext " + (ok ? "ok" : "bad");
      cell.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
    }
    fetch("/api/jobs", { method: "POST", credentials: "same-origin",
                         headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
                         body: JSON.stringify(body) })
      .then(function (r) { return r.json().then(function (doc) { return [r.ok, doc]; }); })
      .then(function (pair) {
        if (!pair[0]) { done(pair[1].reason || "refused", false); return; }
        var job = pair[1];
        var events = new EventSource("/api/jobs/" + job.id + "/events");
        events.addEventListener("progress", function (e) {
          var p = JSON.parse(e.data);
          var pct = p.total ? Math.min(100, Math.round(100 * p.instances / p.total)) : 0;
          bar.style.width = pct + "%";
          bar.parentNode.setAttribute("aria-valuenow", String(pct));
          text.textContent = p.instances + (p.total ? " / " + p.total : "") + " images, " + (p.bytes / 1e6).toFixed(1) + " MB";
        });
        events.addEventListener("done", function (e) {
          var r = JSON.parse(e.data);
          events.close();
          bar.style.width = "100%";
          if (r.download) { window.location.href = r.download; }
          done(r.message, true);
        });
        events.addEventListener("failed", function (e) {
          events.close();
          done(JSON.parse(e.data).reason, false);
        });
        events.onerror = function () { events.close(); };
      })
      .catch(function () { done("could not reach this node", false); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("search-form");
    if (form) {
      form.addEventListener("submit", function (e) { e.preventDefault(); startSearch(form); });
      if (form.dataset.autorun === "1") startSearch(form);
    }
    document.addEventListener("click", function (e) {
      var button = e.target.closest && e.target.closest("button[data-action]");
      if (button) { e.preventDefault(); runJob(button); }
    });
  });
})();
