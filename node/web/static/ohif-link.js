"use strict";
/* medfed: a "Find similar cases" link on OHIF's viewer page, to the web app's similarity
   search for the study on screen (the node adds this script to OHIF's index.html). */
(function () {
  var link = null;
  function studyOnScreen() {
    if (location.pathname.indexOf("/viewer") !== 0) return "";
    var uids = new URLSearchParams(location.search).get("StudyInstanceUIDs") || "";
    return uids.split(",")[0];
  }
  function update() {
    var study = studyOnScreen();
    if (!study) { if (link) link.style.display = "none"; return; }
    if (!link) {
      link = document.createElement("a");
      link.id = "medfed-similar-link";
      link.target = "_blank";
      link.rel = "noopener";
      link.textContent = "Find similar cases";
      link.title = "medfed: compare this hospital's case with every site (images stay at their site)";
      link.setAttribute("style", "position:fixed;right:72px;bottom:12px;z-index:10000;" +
        "background:#0b5394;color:#fff;padding:6px 12px;border-radius:4px;font:14px sans-serif;" +
        "text-decoration:none;box-shadow:0 1px 4px rgba(0,0,0,.4)");
      document.body.appendChild(link);
    }
    link.href = "/similar?study=" + encodeURIComponent(study);
    link.style.display = "";
  }
  document.addEventListener("DOMContentLoaded", update);
  window.addEventListener("popstate", update);
  setInterval(update, 1000);   /* OHIF changes routes without telling the page */
})();
