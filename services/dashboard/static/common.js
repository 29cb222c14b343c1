// Shared helpers of the dashboard pages (plain JS, no build step, no third-party code).
"use strict";

const OT = (() => {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  async function api(url, options = {}) {
    const init = { credentials: "same-origin", headers: { Accept: "application/json" }, ...options };
    if (init.method === "POST") {
      init.headers = { ...init.headers, "Content-Type": "application/json", "X-CSRF-Token": csrf() };
    }
    const response = await fetch(url, init);
    if (response.status === 401) {
      window.location.assign("/dashboard/signin");
      throw new Error("signed out");
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const issue = body && body.issue && body.issue[0];
      throw new Error((issue && (issue.diagnostics || issue.details?.text)) || `request failed (${response.status})`);
    }
    return body;
  }

  // el("p", {class: "x", text: "hi"}, child...) - text goes in as text, never as HTML.
  function el(tag, attrs = {}, ...children) {
    const svg = ["svg", "g", "line", "rect", "circle", "text", "path", "title", "defs", "marker", "polygon"];
    const node = svg.includes(tag)
      ? document.createElementNS("http://www.w3.org/2000/svg", tag)
      : document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // FHIR dates: YYYY, YYYY-MM, YYYY-MM-DD or a dateTime; returns epoch ms (start of the period).
  function time(value) {
    if (!value) return null;
    const m = /^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?/.exec(value);
    if (!m) return null;
    if (value.length > 10) {
      const t = Date.parse(value);
      if (!Number.isNaN(t)) return t;
    }
    return Date.UTC(+m[1], m[2] ? +m[2] - 1 : 0, m[3] ? +m[3] : 1);
  }

  const locale = navigator.languages && navigator.languages.length ? navigator.languages[0] : navigator.language;
  const formats = {
    day: new Intl.DateTimeFormat(locale, { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" }),
    month: new Intl.DateTimeFormat(locale, { year: "numeric", month: "short", timeZone: "UTC" }),
    year: new Intl.DateTimeFormat(locale, { year: "numeric", timeZone: "UTC" }),
  };

  // A FHIR date in the user's locale, at the precision the record gives.
  function date(value) {
    const t = time(value);
    if (t === null) return value ? String(value) : "no date";
    const precision = value.length >= 10 ? "day" : value.length === 7 ? "month" : "year";
    return formats[precision].format(new Date(t));
  }

  function status(text, isError = false) {
    const node = document.getElementById("status");
    if (!node) return;
    node.textContent = text;
    node.classList.toggle("error", isError);
  }

  function ready() {
    document.body.dataset.ready = "true";
    if (window.performance && performance.mark) performance.mark("ot-ready");
  }

  return { api, el, time, date, status, ready, locale, formats };
})();
