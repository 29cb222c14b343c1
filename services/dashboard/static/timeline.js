// The interactive timeline: swimlanes in SVG, zoom and pan (buttons, wheel, drag, keys), and one
// focusable item at a time (roving tabindex) so it works from the keyboard.
"use strict";

const Timeline = (() => {
  const { el, time, date } = OT;
  const LANE_H = 44;
  const LEFT = 190;
  const TOP = 28;
  const DAY = 86400000;

  function create(container, page, onSelect) {
    const lanes = page.lanes;
    const laneIndex = Object.fromEntries(lanes.map((lane, i) => [lane.id, i]));
    const items = [];
    page.timeline.events.forEach((event, i) => {
      const t = time(event.date);
      if (t === null) return;
      items.push({ kind: "event", t, end: t, lane: event.lane, event, id: `e${i}` });
    });
    page.timeline.linesOfTherapy.forEach((line, i) => {
      const t = time(line.start);
      const end = time(line.end) ?? t;
      if (t === null) return;
      items.push({ kind: "line", t, end: Math.max(end, t), lane: "therapy", line, id: `l${i}` });
    });
    // Only lanes that hold something are drawn; their order is the lane list's.
    const used = lanes.filter((lane) => items.some((item) => item.lane === lane.id));
    const row = Object.fromEntries(used.map((lane, i) => [lane.id, i]));
    const byLane = Object.fromEntries(used.map((lane) => [lane.id, []]));
    for (const item of items) (byLane[item.lane] || (byLane[item.lane] = [])).push(item);
    for (const list of Object.values(byLane)) list.sort((a, b) => a.t - b.t);

    const times = items.flatMap((item) => [item.t, item.end]);
    const full = times.length ? [Math.min(...times), Math.max(...times)] : [Date.now() - 365 * DAY, Date.now()];
    const oncology = items.filter((i) => ["diagnosis", "therapy", "medication", "procedure"].includes(i.lane));
    const care = oncology.length ? [Math.min(...oncology.map((i) => i.t)), full[1]] : full;
    let view = pad(full);
    let active = items.length ? byLane[used[0].id][0] : null;
    let width = 900;

    const svg = el("svg", {
      class: "tl",
      role: "group",
      "aria-label": `Timeline with ${items.length} items in ${used.length} lanes`,
      "aria-describedby": "timeline-help",
    });
    container.replaceChildren(svg);

    function pad([a, b]) {
      const span = Math.max(b - a, 30 * DAY);
      return [a - span * 0.03, a + span * 1.06];
    }
    const x = (t) => LEFT + ((t - view[0]) / (view[1] - view[0])) * (width - LEFT - 16);
    const inView = (item) => item.end >= view[0] && item.t <= view[1];
    const label = (item) =>
      item.kind === "line"
        ? `Line ${item.line.line}: ${item.line.regimen}, ${date(item.line.start)} to ${date(item.line.end)}`
        : `${date(item.event.date)}: ${item.event.kind}${item.event.fromText ? " (from a note)" : ""}: ${item.event.display}`;

    function ticks() {
      const span = view[1] - view[0];
      const years = span / (365 * DAY);
      const fmt = years > 3 ? OT.formats.year : OT.formats.month;
      const step = years > 40 ? 10 : years > 12 ? 5 : years > 3 ? 1 : null;
      const out = [];
      const start = new Date(view[0]);
      if (step) {
        for (let y = Math.ceil(start.getUTCFullYear() / step) * step; ; y += step) {
          const t = Date.UTC(y, 0, 1);
          if (t > view[1]) break;
          out.push([t, fmt.format(new Date(t))]);
        }
      } else {
        const months = years > 1.5 ? 3 : years > 0.5 ? 1 : 1;
        for (let m = start.getUTCFullYear() * 12 + start.getUTCMonth() + 1; ; m += months) {
          const t = Date.UTC(Math.floor(m / 12), m % 12, 1);
          if (t > view[1]) break;
          out.push([t, fmt.format(new Date(t))]);
        }
      }
      return out.slice(0, 40);
    }

    function draw() {
      // Keep focus on the timeline across redraws (drag, wheel, buttons re-create its nodes).
      const hadFocus = svg.contains(document.activeElement);
      // The one tab stop must stay in view: after pan/zoom, the nearest item in view takes over.
      if (active && !inView(active)) {
        const mid = (active.t + active.end) / 2;
        const distance = (item) => Math.abs((item.t + item.end) / 2 - mid);
        const visible = items.filter(inView);
        if (visible.length) active = visible.reduce((best, c) => (distance(c) < distance(best) ? c : best));
      }
      const anyInView = active !== null && inView(active);
      // Nothing in view: the timeline itself is the tab stop (arrow keys bring an item back into view).
      if (anyInView) svg.removeAttribute("tabindex");
      else svg.setAttribute("tabindex", "0");
      width = Math.max(container.clientWidth || 900, 480);
      const height = TOP + used.length * LANE_H + 8;
      svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
      svg.setAttribute("width", width);
      svg.setAttribute("height", height);
      const parts = [];
      used.forEach((lane, i) => {
        const y = TOP + i * LANE_H;
        parts.push(el("rect", { class: `lane lane-${i % 2}`, x: 0, y, width, height: LANE_H }));
        parts.push(el("text", { class: "lane-title", x: 8, y: y + LANE_H / 2 + 4, text: lane.title }));
      });
      for (const [t, text] of ticks()) {
        const tx = x(t);
        if (tx < LEFT) continue;
        parts.push(el("line", { class: "tick", x1: tx, x2: tx, y1: TOP - 6, y2: TOP + used.length * LANE_H }));
        parts.push(el("text", { class: "tick-label", x: tx + 3, y: TOP - 10, text }));
      }
      for (const item of items) {
        if (!inView(item)) continue;
        const y = TOP + row[item.lane] * LANE_H + LANE_H / 2;
        const common = {
          class: `item kind-${item.kind === "line" ? "line" : item.event.kind}${item === active ? " active" : ""}${
            item.event && item.event.negated ? " negated" : ""
          }`,
          tabindex: item === active ? 0 : -1,
          role: "button",
          "aria-label": label(item),
          "data-id": item.id,
          "data-kind": item.kind === "line" ? "line" : item.event.kind,
        };
        let node;
        if (item.kind === "line") {
          const x1 = Math.max(x(item.t), LEFT);
          const x2 = Math.max(Math.min(x(item.end), width - 8), x1 + 6);
          node = el(
            "g",
            common,
            el("rect", { x: x1, y: y - 11, width: x2 - x1, height: 22, rx: 4 }),
            el("text", { class: "line-label", x: x1 + 5, y: y + 4, text: `Line ${item.line.line}: ${item.line.regimen}` })
          );
        } else {
          node = el("g", common, el("circle", { cx: x(item.t), cy: y, r: item.event.fromText ? 5 : 7 }));
        }
        node.append(el("title", { text: label(item) }));
        parts.push(node);
      }
      svg.replaceChildren(...parts);
      if (hadFocus) {
        const node = anyInView && svg.querySelector(`[data-id="${active.id}"]`);
        (node || svg).focus();
      }
      const range = document.getElementById("range");
      if (range) range.textContent = `${date(new Date(view[0]).toISOString().slice(0, 10))} – ${date(
        new Date(view[1]).toISOString().slice(0, 10)
      )}`;
    }

    function focusActive() {
      const node = active && svg.querySelector(`[data-id="${active.id}"]`);
      if (node) node.focus();
    }

    function setActive(item, focus = true) {
      if (!item) return;
      active = item;
      if (!inView(item)) {
        const span = view[1] - view[0];
        view = [item.t - span / 2, item.t + span / 2];
      }
      draw();
      if (focus) focusActive();
    }

    function zoom(factor, around) {
      const center = around ?? (active && inView(active) ? active.t : (view[0] + view[1]) / 2);
      const span = Math.min(Math.max((view[1] - view[0]) * factor, 7 * DAY), 200 * 365 * DAY);
      const ratio = (center - view[0]) / (view[1] - view[0]);
      view = [center - span * ratio, center + span * (1 - ratio)];
      draw();
    }

    function pan(fraction) {
      const shift = (view[1] - view[0]) * fraction;
      view = [view[0] + shift, view[1] + shift];
      draw();
    }

    function neighbour(item, key) {
      const list = byLane[item.lane];
      const i = list.indexOf(item);
      if (key === "ArrowRight") return list[i + 1];
      if (key === "ArrowLeft") return list[i - 1];
      if (key === "Home") return list[0];
      if (key === "End") return list[list.length - 1];
      const r = row[item.lane] + (key === "ArrowDown" ? 1 : -1);
      const lane = used[r];
      if (!lane) return null;
      return byLane[lane.id].reduce((best, c) => (Math.abs(c.t - item.t) < Math.abs(best.t - item.t) ? c : best));
    }

    svg.addEventListener("keydown", (event) => {
      if (!active) return;
      if (["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End"].includes(event.key)) {
        event.preventDefault();
        setActive(neighbour(active, event.key));
      } else if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        onSelect(active);
      } else if (event.key === "+" || event.key === "=") {
        zoom(0.5);
        focusActive();
      } else if (event.key === "-") {
        zoom(2);
        focusActive();
      }
    });
    svg.addEventListener("click", (event) => {
      const node = event.target.closest("[data-id]");
      if (!node || dragged) return;
      const item = items.find((i) => i.id === node.dataset.id);
      setActive(item);
      onSelect(item);
    });
    svg.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        const box = svg.getBoundingClientRect();
        const t = view[0] + ((event.clientX - box.left - LEFT) / (box.width - LEFT - 16)) * (view[1] - view[0]);
        zoom(event.deltaY > 0 ? 1.25 : 0.8, Math.min(Math.max(t, view[0]), view[1]));
      },
      { passive: false }
    );
    let dragStart = null;
    let dragged = false;
    svg.addEventListener("pointerdown", (event) => {
      dragStart = { x: event.clientX, view };
      dragged = false;
    });
    window.addEventListener("pointermove", (event) => {
      if (!dragStart) return;
      const dx = event.clientX - dragStart.x;
      if (Math.abs(dx) > 4) dragged = true;
      if (!dragged) return;
      const per = (dragStart.view[1] - dragStart.view[0]) / (width - LEFT - 16);
      view = [dragStart.view[0] - dx * per, dragStart.view[1] - dx * per];
      draw();
    });
    window.addEventListener("pointerup", () => {
      dragStart = null;
      setTimeout(() => (dragged = false), 0);
    });
    window.addEventListener("resize", draw);

    const actions = {
      "zoom-in": () => zoom(0.5),
      "zoom-out": () => zoom(2),
      "pan-left": () => pan(-0.3),
      "pan-right": () => pan(0.3),
      fit: () => ((view = pad(full)), draw()),
      cancer: () => ((view = pad(care)), draw()),
    };
    draw();
    return {
      action: (name) => actions[name] && actions[name](),
      items,
      lanes: used,
      laneIndex,
      get view() {
        return view.slice();
      },
    };
  }

  return { create };
})();
