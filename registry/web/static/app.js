// tvreg web view: the one script (no inline script: the Content-Security-Policy forbids it).
// Shows the value of a heatmap cell, a lineage node or a layer's bars under the pointer.
// Texts are set with textContent only, never parsed as HTML.
(function () {
  "use strict";
  function ready(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }
  ready(function () {
    var tip = document.getElementById("tip");
    if (!tip) return;
    function target(ev) {
      var el = ev.target;
      while (el && el !== document && !(el.getAttribute && el.getAttribute("data-tip"))) el = el.parentNode;
      return el && el !== document ? el : null;
    }
    document.addEventListener("mouseover", function (ev) {
      var el = target(ev);
      if (!el) { tip.hidden = true; return; }
      tip.textContent = el.getAttribute("data-tip");
      tip.hidden = false;
    });
    document.addEventListener("mousemove", function (ev) {
      if (tip.hidden) return;
      var x = ev.clientX + 14, y = ev.clientY + 14;
      var w = tip.offsetWidth, h = tip.offsetHeight;
      if (x + w > window.innerWidth - 4) x = ev.clientX - w - 10;
      if (y + h > window.innerHeight - 4) y = ev.clientY - h - 10;
      tip.style.left = x + "px";
      tip.style.top = y + "px";
    });
    document.addEventListener("mouseout", function (ev) {
      if (!ev.relatedTarget || !target({ target: ev.relatedTarget })) tip.hidden = true;
    });
  });
})();
