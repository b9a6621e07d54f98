// Live pages reload themselves every data-refresh seconds (on <body>), like the
// <meta http-equiv=refresh> they replace, but a reader can pause it (WCAG 2.2.1: timing
// adjustable), it waits while the tab is hidden, and it never reloads under a half-typed form.
"use strict";
(() => {
  const seconds = Number(document.body.dataset.refresh || 0);
  if (!seconds) return;
  let paused = sessionStorage.getItem("factoryops.refresh") === "paused";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "refresh-toggle";
  const label = () => {
    button.textContent = paused ? "Resume live updates" : `Pause live updates (every ${seconds} s)`;
    button.setAttribute("aria-pressed", String(paused));
  };
  button.addEventListener("click", () => {
    paused = !paused;
    sessionStorage.setItem("factoryops.refresh", paused ? "paused" : "live");
    label();
  });
  label();
  (document.querySelector("nav.top") || document.body).appendChild(button);
  setInterval(() => {
    const typing = document.activeElement && ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    if (!paused && !typing && document.visibilityState === "visible") window.location.reload();
  }, seconds * 1000);
})();
