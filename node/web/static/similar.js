"use strict";
/* medfed web app: "find similar cases" — per-site statuses stream in (server-sent
   events, HTML rendered by the server), then the ranked matches; the clinician records
   a diagnosis for their own case. No libraries. */
(function () {
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function start(form) {
    var strip = document.getElementById("strip");
    var results = document.getElementById("results");
    var status = document.getElementById("similar-status");
    var button = document.getElementById("similar-button");
    var params = new URLSearchParams(new FormData(form));
    Array.from(params.keys()).forEach(function (k) { if (!params.get(k)) params.delete(k); });
    history.replaceState(null, "", "/similar?" + params.toString());
    if (form._source) form._source.close();
    button.disabled = true;
    results.innerHTML = "";
    status.textContent = "Computing your case's features and asking the sites\u2026";
    document.body.dataset.similar = "running";
    var finished = false;
    var source = new EventSource("/api/similar?" + params.toString());
    form._source = source;
    function end(text, state) {
      finished = true;
      source.close();
      button.disabled = false;
      status.textContent = text;
      document.body.dataset.similar = state;
    }
    source.addEventListener("update", function (e) {
      var doc = JSON.parse(e.data);
      strip.innerHTML = doc.strip;
      var waiting = strip.querySelectorAll('[data-status="waiting"]').length;
      status.textContent = waiting ? waiting + " site(s) still computing\u2026" : "Ranking\u2026";
    });
    source.addEventListener("done", function (e) {
      var doc = JSON.parse(e.data);
      strip.innerHTML = doc.strip;
      results.innerHTML = doc.results;
      end("Done.", "done");
    });
    source.addEventListener("failed", function (e) {
      var box = document.createElement("div");
      box.className = "alert alert-error";
      box.setAttribute("role", "alert");
      box.textContent = JSON.parse(e.data).reason;
      results.appendChild(box);
      end("The search failed.", "failed");
    });
    source.onerror = function () {
      if (!finished) end("The connection to this node was lost; search again.", "failed");
    };
  }

  function diagnose(form) {
    var out = document.getElementById("diagnosis-status");
    var ranks = Array.from(document.querySelectorAll('#matches input[name="match"]:checked'))
      .map(function (box) { return parseInt(box.value, 10); });
    var body = { series: form.dataset.series, run: form.dataset.run, matches: ranks,
                 diagnosis: form.querySelector("#diagnosis").value,
                 report: form.querySelector("#report").value,
                 purpose: (document.getElementById("purpose") || {}).value || "" };
    out.textContent = "Recording\u2026";
    out.className = "";
    fetch("/api/similar/diagnosis", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify(body) })
      .then(function (r) { return r.json().then(function (doc) { return [r.ok, doc]; }); })
      .then(function (pair) {
        if (!pair[0]) { out.textContent = pair[1].reason || "refused"; out.className = "jtext bad"; return; }
        out.textContent = "Recorded (provenance record " + pair[1].record_id + ").";
        out.className = "jtext ok";
        out.dataset.record = pair[1].record_id;
      })
      .catch(function () { out.textContent = "could not reach this node"; out.className = "jtext bad"; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("similar-form");
    if (!form) return;
    form.addEventListener("submit", function (e) { e.preventDefault(); start(form); });
    document.addEventListener("submit", function (e) {
      if (e.target && e.target.id === "diagnosis-form") { e.preventDefault(); diagnose(e.target); }
    });
    if (form.dataset.autorun === "1") start(form);
  });
})();
