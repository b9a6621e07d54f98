// Asks before a form that cannot be undone is sent. The question is the form's
// data-confirm attribute (escaped by the template like any text), never code: the pages
// carry no inline script or handler, and the Content-Security-Policy allows none.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form instanceof HTMLFormElement ? form.dataset.confirm : undefined;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
