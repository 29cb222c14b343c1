// The pathway graph, laid out in layers from its start, with the patient's path highlighted.
"use strict";

(() => {
  const { api, el, status, ready } = OT;
  const app = document.getElementById("app");
  const W = 210;
  const H = 54;
  const GAP_X = 24;
  const GAP_Y = 46;
  const STATUS_TEXT = {
    position: "patient is here",
    done: "done",
    decided: "decided",
    skipped: "no evidence on record",
    "not-done": "next on the walk, not done",
    undetermined: "decision not determinable from the record",
  };

  function wrap(text, max) {
    const words = text.split(/\s+/);
    const lines = [""];
    for (const w of words) {
      const last = lines.length - 1;
      if ((lines[last] + " " + w).trim().length > max && lines[last]) lines.push(w);
      else lines[last] = (lines[last] + " " + w).trim();
    }
    return lines.slice(0, 2).map((l, i, all) => (i === 1 && lines.length > 2 ? l + "…" : l));
  }

  function draw(data) {
    const pos = {};
    const widest = Math.max(...data.nodes.map((n) => n.column)) + 1;
    const layers = Math.max(...data.nodes.map((n) => n.layer)) + 1;
    for (const n of data.nodes) pos[n.id] = { x: 10 + n.column * (W + GAP_X), y: 10 + n.layer * (H + GAP_Y) };
    const width = 20 + widest * (W + GAP_X);
    const height = 20 + layers * (H + GAP_Y);
    const svg = el("svg", { class: "pw", viewBox: `0 0 ${width} ${height}`, width, height, role: "group", "aria-label": `${data.pathway.title}: ${data.nodes.length} steps` },
      el("defs", {}, el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" }, el("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }))));
    for (const e of data.edges) {
      const a = pos[e.from];
      const b = pos[e.to];
      if (!a || !b) continue;
      const down = b.y > a.y;
      svg.append(el("line", {
        class: `edge ${e.kind}${e.onPath ? " on-path" : ""}`,
        x1: a.x + W / 2, y1: down ? a.y + H : a.y + H / 2, x2: b.x + W / 2, y2: down ? b.y : b.y + H / 2,
        "marker-end": "url(#arrow)",
      }));
    }
    for (const n of data.nodes) {
      const p = pos[n.id];
      const state = n.status || "other";
      const label = `${n.title} (${n.kind}${n.step ? `, ${n.step}` : ""}): ${STATUS_TEXT[n.status] || "not reached"}`;
      const g = el("g", { class: `node ${n.kind} ${state}`, tabindex: 0, role: "img", "aria-label": label, "data-node": n.id },
        el("title", { text: n.summary ? `${label}. ${n.summary}` : label }),
        el("rect", { x: p.x, y: p.y, width: W, height: H, rx: n.kind === "decision" ? 14 : 4 }));
      wrap(n.title, 30).forEach((line, i) => g.append(el("text", { x: p.x + 8, y: p.y + 20 + i * 16, text: line })));
      svg.append(g);
    }
    document.getElementById("graph").replaceChildren(svg);
    document.getElementById("node-list").replaceChildren(
      ...data.nodes.map((n) => el("li", { class: n.status || "other" }, `${n.title} — ${STATUS_TEXT[n.status] || "not reached"}`)));
  }

  api(app.dataset.api)
    .then((data) => {
      document.getElementById("pathway-title").textContent = `${data.pathway.title} (version ${data.pathway.version})`;
      status(`${data.patient.name}: ${data.position.length} current step(s). ${data.disclaimer}`);
      document.getElementById("legend").hidden = false;
      draw(data);
      ready();
    })
    .catch((error) => status(error.message, true));
})();
