// The patient page: summary, timeline, source viewer, care pathway and necessity of the orders.
"use strict";

(() => {
  const { api, el, date, status, ready } = OT;
  const app = document.getElementById("app");
  const pid = app.dataset.patient;
  let page = null;

  const show = (id) => (document.getElementById(id).hidden = false);
  const sourceButton = (reference, text, extra = {}) =>
    el("button", { type: "button", class: "link source-link", "data-ref": reference, text: text || reference, ...extra });

  // --- source viewer --------------------------------------------------------------------------
  async function showSource(reference, span) {
    const section = document.getElementById("source");
    const body = document.getElementById("source-body");
    section.hidden = false;
    body.replaceChildren(el("p", { role: "status", text: `Loading ${reference}…` }));
    try {
      const src = await api(`/dashboard/api/patients/${encodeURIComponent(pid)}/source?ref=${encodeURIComponent(reference)}`);
      const parts = [el("p", {}, el("strong", { text: "Resource: " }), el("code", { id: "source-ref", text: src.reference }))];
      if (src.note) {
        const text = src.note.text;
        const passage = el("blockquote", { class: "note", id: "source-note" });
        if (span && span.end <= text.length) {
          const from = Math.max(0, span.start - 400);
          const to = Math.min(text.length, span.end + 400);
          passage.append(
            (from > 0 ? "… " : "") + text.slice(from, span.start),
            el("mark", { id: "source-passage", text: text.slice(span.start, span.end) }),
            text.slice(span.end, to) + (to < text.length ? " …" : "")
          );
        } else {
          passage.textContent = text.length > 4000 ? `${text.slice(0, 4000)} …` : text;
        }
        parts.push(el("h3", { text: "Note passage" }), passage);
      }
      parts.push(
        el("details", { open: !src.note }, el("summary", { text: "FHIR resource (JSON)" }),
          el("pre", { class: "json", id: "source-json", text: JSON.stringify(src.resource, null, 2) }))
      );
      body.replaceChildren(...parts);
      section.focus();
    } catch (error) {
      body.replaceChildren(el("p", { class: "error", role: "alert", text: error.message }));
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest(".source-link");
    if (!button) return;
    const span = button.dataset.span ? JSON.parse(button.dataset.span) : null;
    showSource(button.dataset.ref, span);
  });

  function selectItem(item) {
    if (item.kind === "line") return showSource(item.line.sources[0]);
    return showSource(item.event.source, item.event.span);
  }

  // --- summary --------------------------------------------------------------------------------
  function renderSummary() {
    const { cancers, linesOfTherapy } = page.timeline;
    const cancerList = el("ul", { class: "cancers", id: "cancer-list" });
    for (const c of cancers) {
      const stage = c.stage && c.stage.stage ? `Stage ${c.stage.stage}` : "stage not recorded";
      cancerList.append(
        el("li", { "data-cancer": c.cancerType },
          el("strong", { text: c.code.display || c.cancerType }),
          ` (${c.cancerType}, ${c.role}) · `,
          el("span", { class: "stage", text: stage }),
          ` · diagnosed ${date(c.onset)} · `,
          sourceButton(c.source, "source"))
      );
    }
    if (!cancers.length) cancerList.append(el("li", { text: "No cancer recorded." }));
    const lines = el("ol", { class: "lines", id: "line-list", "aria-label": "Lines of therapy" });
    for (const l of linesOfTherapy) {
      lines.append(
        el("li", {}, el("strong", { text: `Line ${l.line}: ${l.regimen}` }), ` · ${date(l.start)} – ${date(l.end)} · ${l.exposures} exposure(s) · `,
          sourceButton(l.sources[0], "source"))
      );
    }
    const linesBlock = linesOfTherapy.length ? [el("h3", { text: "Lines of therapy" }), lines] : [el("p", { text: "No lines of therapy recorded." })];
    document.getElementById("cancers").replaceChildren(cancerList);
    document.getElementById("lines").replaceChildren(...linesBlock);
    show("summary");
  }

  // --- timeline -------------------------------------------------------------------------------
  function renderTimeline() {
    const view = Timeline.create(document.getElementById("timeline"), page, selectItem);
    document.querySelector(".toolbar").addEventListener("click", (event) => {
      const button = event.target.closest("[data-act]");
      if (button) view.action(button.dataset.act);
    });
    const titles = Object.fromEntries(page.lanes.map((l) => [l.id, l.title]));
    const rows = page.timeline.events.map((e) =>
      el("tr", {},
        el("td", { text: date(e.date) }),
        el("td", { text: titles[e.lane] || e.lane }),
        el("td", { text: e.kind + (e.fromText ? " (note)" : "") + (e.negated ? ", negated" : "") }),
        el("td", { text: e.display + (e.detail ? ` (${e.detail})` : "") }),
        el("td", {}, sourceButton(e.source, "source", { "data-span": e.span ? JSON.stringify(e.span) : null })))
    );
    document.querySelector("#event-table tbody").replaceChildren(...rows);
    show("timeline-section");
  }

  // --- care pathway ---------------------------------------------------------------------------
  function evidenceList(items) {
    if (!items || !items.length) return null;
    return el("ul", { class: "evidence" }, items.map((f) =>
      el("li", {}, `${f.fact}${f.value ? `: ${f.value}` : ""}${f.date ? ` (${date(f.date)})` : ""} `, sourceButton(f.source, "source"))));
  }

  function renderNavigation() {
    const body = document.getElementById("navigation-body");
    const nav = page.navigation;
    if (!nav) {
      body.replaceChildren(el("p", { text: "Your sign-in does not include care navigation (navigation.read)." }));
      return show("navigation");
    }
    if (!nav.pathways.length) {
      body.replaceChildren(el("p", { text: "No care pathway applies to this record." }));
      return show("navigation");
    }
    // Pathways are linked by their place in the list: a key like "pdq-nsclc@v" names the diagnosis.
    const blocks = nav.pathways.map((p, index) => {
      return el("article", { class: "pathway", "aria-label": p.title },
        el("h3", { text: `${p.title} (${p.status})` }),
        el("p", {}, el("a", { href: `${app.dataset.pathwayBase}${index}`, class: "pathway-link", text: "Show the pathway graph with this patient's path" })),
        el("h4", { text: "Where the patient is" }),
        el("ul", {}, p.position.map((pos) => el("li", {}, el("strong", { text: pos.step.title }), ` (${pos.status}${pos.inferred ? ", inferred" : ""}${pos.since ? `, since ${date(pos.since)}` : ""})`, evidenceList(pos.facts)))),
        el("h4", { text: "Next steps" }),
        p.nextSteps.length
          ? el("ul", { class: "next-steps" }, p.nextSteps.map((s) => el("li", { class: s.overdue ? "overdue" : "" }, el("strong", { text: s.step.title }), s.due ? ` — due ${date(s.due)}${s.overdue ? " (overdue)" : ""}` : " — no due date", `. ${s.reason}`)))
          : el("p", { text: "No next steps." }),
        el("h4", { text: "Care gaps" }),
        p.gaps.length
          ? el("ul", { class: "gaps" }, p.gaps.map((g) => el("li", {}, el("strong", { text: `${g.kind}: ${g.step.title}` }), `. ${g.reason}`, evidenceList(g.evidence))))
          : el("p", { text: "No care gaps found." }),
        p.offPathway.length
          ? [el("h4", { text: "Off-pathway treatment" }), el("ul", {}, p.offPathway.map((o) => el("li", {}, `Line ${o.line} (${o.regimen}, ${date(o.start)}): ${o.reason} `, o.sources[0] ? sourceButton(o.sources[0], "source") : null)))]
          : null);
    });
    body.replaceChildren(...blocks, el("p", { class: "help", text: nav.disclaimer }));
    show("navigation");
  }

  // --- necessity ------------------------------------------------------------------------------
  function criterion(node) {
    const item = el("li", { class: `criterion ${node.status}` },
      el("span", { class: "badge", text: node.status }), " ", node.label,
      evidenceList(node.evidence),
      node.passages && node.passages.length
        ? el("ul", { class: "passages" }, node.passages.map((p) => el("li", {}, `“${p.text}” `, sourceButton(p.source, "note", { "data-span": JSON.stringify({ start: p.start, end: p.end }) }))))
        : null);
    if (node.children && node.children.length) item.append(el("ul", {}, node.children.map(criterion)));
    return item;
  }

  function renderNecessity() {
    const body = document.getElementById("necessity-body");
    const nec = page.necessity;
    if (!nec) {
      body.replaceChildren(el("p", { text: "Your sign-in does not include medical necessity (necessity.read)." }));
      return show("necessity");
    }
    if (!nec.determinations.length) {
      body.replaceChildren(el("p", { id: "no-orders", text: "No draft or active oncology orders in this record." }));
      return show("necessity");
    }
    const blocks = nec.determinations.map((d, i) => {
      const panelId = `evidence-${i}`;
      const panel = el("div", { id: panelId, class: "evidence-panel", hidden: true },
        el("p", { text: d.rationale }),
        d.criteria ? el("ul", { class: "criteria" }, criterion(d.criteria)) : null,
        d.citations.length ? el("ul", { class: "citations" }, d.citations.map((c) => el("li", { text: `${c.title} (${c.publisher}), ${c.section}` }))) : null);
      const toggle = el("button", { type: "button", class: "evidence-toggle", "aria-expanded": "false", "aria-controls": panelId, text: "Show evidence" });
      toggle.addEventListener("click", () => {
        const open = panel.hidden;
        panel.hidden = !open;
        toggle.setAttribute("aria-expanded", String(open));
        toggle.textContent = open ? "Hide evidence" : "Show evidence";
      });
      return el("article", { class: "order", "aria-label": d.order.code.display || d.order.reference },
        el("h3", {}, d.order.code.display || d.order.reference, " ", el("span", { class: `determination ${d.determination}`, text: d.determination })),
        el("p", {}, `Ordered ${date(d.order.authored)} · ${d.order.status || "status unknown"} · confidence ${Math.round(d.confidence * 100)}%${d.needsReview ? " · needs review" : ""} · `, sourceButton(d.order.reference, "order")),
        toggle, panel);
    });
    body.replaceChildren(...blocks, el("p", { class: "help", text: nec.disclaimer }));
    show("necessity");
  }

  api(app.dataset.api)
    .then((data) => {
      page = data;
      document.getElementById("patient-name").textContent = data.patient.name;
      // The title stays generic: titles go into the browser's history, which outlives the session.
      status(`Born ${date(data.patient.birthDate)} · ${data.patient.gender || "gender unknown"}${data.patient.deceased ? ` · died ${date(data.patient.deceased)}` : data.patient.isDeceased ? " · deceased (date not recorded)" : ""}`);
      renderSummary();
      renderTimeline();
      renderNavigation();
      renderNecessity();
      ready();
    })
    .catch((error) => status(error.message, true));
})();
