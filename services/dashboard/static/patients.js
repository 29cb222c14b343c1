// The patient list: searched by name in the page (folder data) or by a POST to the server (FHIR server).
"use strict";

(() => {
  const { api, el, date, status, ready } = OT;
  const table = document.getElementById("patients");
  const body = table.querySelector("tbody");
  const input = document.getElementById("q");
  let all = [];
  let source = "folder";

  function render(patients) {
    body.replaceChildren(
      ...patients.map((p) =>
        el(
          "tr",
          {},
          el("td", {}, el("a", { href: `/dashboard/patients/${encodeURIComponent(p.id)}`, text: p.name })),
          el("td", { text: p.birthDate ? date(p.birthDate) : "unknown" }),
          el("td", { text: p.gender || "unknown" })
        )
      )
    );
    table.hidden = patients.length === 0;
    status(patients.length ? `${patients.length} patient(s)` : "No patients match.");
  }

  async function search(query) {
    const answer = await api("/dashboard/api/patients/search", { method: "POST", body: JSON.stringify({ query }) });
    source = answer.source;
    return answer.patients;
  }

  function filterLocally() {
    const text = input.value.trim().toLowerCase();
    render(text ? all.filter((p) => p.name.toLowerCase().includes(text)) : all);
  }

  input.addEventListener("input", () => {
    if (source === "folder") filterLocally();
  });
  document.getElementById("search").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (source === "folder") return filterLocally();
    try {
      render(await search(input.value.trim()));
    } catch (error) {
      status(error.message, true);
    }
  });

  search("")
    .then((patients) => {
      all = patients;
      render(all);
      ready();
    })
    .catch((error) => status(error.message, true));
})();
