"""CDS Hooks 2.0 in-process: discovery, the three services from prefetch and from a real (local)
FHIR server, 412, every client-JWT rejection (the engines never run), CRD system actions, feedback,
and the jti replay store in memory and on the real local Redis."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask.testing import FlaskClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

import services.cds_hooks.app as cds_app
from services.cds_hooks.crd import CRD_COVERAGE_INFORMATION
from services.cds_hooks.security import MemoryReplayStore, RedisReplayStore
from shared.config import load_settings
from shared.errors import ConfigError
from tests.conftest import requires_data, synthea

ISSUER = "https://ehr.example.org"
BASE = "https://oncotwin.example.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
JSON = {"Content-Type": "application/json"}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
REDIS_URL = "redis://localhost:6379/0"


# --- keys and tokens ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    private: Any
    kid: str
    alg: str

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        algorithm = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        jwk = algorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {
        "es384": Key(ec.generate_private_key(ec.SECP384R1()), "ehr-es384", "ES384"),
        "rs384": Key(rsa.generate_private_key(public_exponent=65537, key_size=2048), "ehr-rs384", "RS384"),
        "stranger": Key(ec.generate_private_key(ec.SECP384R1()), "not-in-jwks", "ES384"),
        "jku": Key(ec.generate_private_key(ec.SECP384R1()), "ehr-jku", "ES384"),
    }


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims_for(path: str, **override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": BASE + path, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not None}


def sign(key: Key, claims: dict[str, Any], **header: Any) -> str:
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "JWT", **header})


# --- apps -----------------------------------------------------------------------------------------


@dataclass
class Cds:
    """A CDS Hooks app plus a CDS Client that signs each call; counts engine and data calls."""

    http: FlaskClient
    key: Key
    calls: Counter[str] = field(default_factory=Counter)

    def post(self, service: str, body: dict[str, Any], token: str | None = None, **claims: Any) -> Any:
        path = f"/cds-services/{service}"
        token = token or sign(self.key, claims_for(path, **claims))
        return self.http.post(path, data=json.dumps(body), headers=JSON | {"Authorization": f"Bearer {token}"})

    def discovery(self) -> dict[str, Any]:
        response = self.http.get("/cds-services")
        assert response.status_code == 200
        return {s["id"]: s for s in response.get_json()["services"]}


@pytest.fixture
def jwks_file(tmp_path: Path, keys: dict[str, Key]) -> Path:
    path = tmp_path / "ehr-jwks.json"
    path.write_text(json.dumps({"keys": [keys["es384"].jwk, keys["rs384"].jwk]}))
    return path


@pytest.fixture
def make_cds(tmp_path: Path, jwks_file: Path, keys: dict[str, Key], monkeypatch) -> Callable[..., Cds]:
    def make(configured: bool = True, key: str = "es384", **env: str) -> Cds:
        base = {"ONCOTWIN_DATA_DIR": str(tmp_path / "var")}
        if configured:
            base |= {"CDS_JWKS_FILE": str(jwks_file), "CDS_ALLOWED_ISSUERS": ISSUER, "CDS_BASE_URL": BASE}
        app = cds_app.create_app(load_settings(base | env))
        cds = Cds(app.test_client(), keys[key])
        for name in ("navigate", "assess", "gather"):
            original = getattr(cds_app, name)

            def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
                cds.calls[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(cds_app, name, counted)
        return cds

    return make


@pytest.fixture
def cds(make_cds: Callable[..., Cds]) -> Cds:
    return make_cds()


# --- FHIR data: real Synthea and constructed mCODE-style ------------------------------------------


def server_style(bundle_path: Path) -> list[dict[str, Any]]:
    """A Synthea transaction bundle as a FHIR server holds it: ``urn:uuid:`` references -> Type/id."""
    bundle = json.loads(bundle_path.read_text())
    local = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (local.get(v, v) if k == "reference" else fix(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    return [fix(e["resource"]) for e in bundle["entry"]]


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]}


CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def nsclc_patient(egfr: str | None, pid: str = "egfr-1") -> list[dict[str, Any]]:
    """Stage IV NSCLC (mCODE primary cancer condition + TNM clinical stage group); EGFR positive,
    negative (with ALK negative) or never tested."""
    subject = {"reference": f"Patient/{pid}"}
    out: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1958-04-02"},
        {
            "resourceType": "Condition",
            "id": "nsclc-1",
            "meta": {"profile": ["http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-primary-cancer-condition"]},
            "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active"),
            "verificationStatus": coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed"),
            "code": coding("http://snomed.info/sct", "254637007", "Non-small cell lung cancer"),
            "subject": subject,
            "onsetDateTime": "2024-01-10",
        },
        {
            "resourceType": "Observation",
            "id": "stage-1",
            "status": "final",
            "meta": {"profile": ["http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-tnm-clinical-stage-group"]},
            "category": [coding(CATEGORY, "survey")],
            "code": coding("http://loinc.org", "21908-9"),
            "subject": subject,
            "focus": [{"reference": "Condition/nsclc-1"}],
            "effectiveDateTime": "2024-01-20",
            "valueCodeableConcept": coding("http://cancerstaging.org", "IV"),
        },
    ]
    if egfr is not None:
        value = {"positive": ("LA6576-8", "Positive"), "negative": ("LA6577-6", "Negative")}[egfr]
        for oid, code, text, result in (
            ("egfr-obs", "39004-7", "EGFR Ag [Presence] in Tissue", value),
            ("alk-obs", "46264-8", "ALK gene rearrangement", ("LA6577-6", "Negative")),
        ):
            out.append(
                {
                    "resourceType": "Observation",
                    "id": oid,
                    "status": "final",
                    "category": [coding(CATEGORY, "laboratory")],
                    "code": {**coding("http://loinc.org", code, text), "text": text},
                    "subject": subject,
                    "effectiveDateTime": "2024-02-01",
                    "valueCodeableConcept": coding("http://loinc.org", *result),
                }
            )
    return out


def draft(rid: str, rxcui: str, name: str, pid: str = "egfr-1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": "2024-03-01",
        "medicationCodeableConcept": coding(RXNORM, rxcui, name),
        **extra,
    }


OSIMERTINIB = ("draft-osi", "1721560", "osimertinib")


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def search(resources: list[dict[str, Any]], query: str) -> dict[str, Any] | None:
    """What a FHIR server answers to ``Type/id`` or ``Type?patient=..&category=..`` (a prefetch
    template with its tokens filled): the resource, a searchset Bundle, or None."""
    path, _, qs = query.partition("?")
    if "/" in path:
        rtype, rid = path.split("/", 1)
        return next((r for r in resources if r["resourceType"] == rtype and r.get("id") == rid), None)
    params = {k: v[0] for k, v in parse_qs(qs).items()}

    def matches(r: dict[str, Any]) -> bool:
        if r["resourceType"] != path:
            return False
        ref = (r.get("beneficiary") if path == "Coverage" else r.get("subject")) or {}
        if "patient" in params and ref.get("reference") != f"Patient/{params['patient']}":
            return False
        if "category" in params:
            codes = {c.get("code") for cat in r.get("category") or [] for c in cat.get("coding") or []}
            if params["category"] not in codes:
                return False
        return "status" not in params or r.get("status") == params["status"]

    found = [r for r in resources if matches(r)]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "entry": [{"resource": r} for r in found],
    }


def prefetch(service: dict[str, Any], resources: list[dict[str, Any]], pid: str) -> dict[str, Any]:
    """The CDS Client's side: every template of the discovery answer, filled and answered."""
    out = {}
    for key, template in service["prefetch"].items():
        answer = search(resources, template.replace("{{context.patientId}}", pid))
        out[key] = answer if answer is None or answer["resourceType"] != "Bundle" or answer["entry"] else None
    return out


def hook_body(hook: str, pid: str, **extra: Any) -> dict[str, Any]:
    context = {"userId": "Practitioner/dr-1", "patientId": pid, **extra.pop("context", {})}
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, **extra}


# --- a local FHIR server serving searchset Bundles from files ---------------------------------------


class FhirFiles:
    """A tiny FHIR server over a folder: ``{Type}.json`` holds every resource of a type; searches
    are answered from it by ``search``. Records every Authorization header it receives."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.authorizations: list[str | None] = []
        self.paths: list[str] = []

    def store(self, resources: list[dict[str, Any]]) -> None:
        by_type: dict[str, list[dict[str, Any]]] = {}
        for r in resources:
            by_type.setdefault(r["resourceType"], []).append(r)
        for rtype, items in by_type.items():
            (self.folder / f"{rtype}.json").write_text(json.dumps(bundle(items)))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.authorizations.append(request.headers.get("Authorization"))
        self.paths.append(request.path)
        if request.path.startswith("/jwks/"):
            file = self.folder / request.path.removeprefix("/jwks/")
            return Response(file.read_bytes(), mimetype="application/json")(environ, start_response)
        rest = request.path.removeprefix("/fhir/")
        rtype = rest.split("/", 1)[0]
        file = self.folder / f"{rtype}.json"
        resources = [e["resource"] for e in json.loads(file.read_text())["entry"]] if file.exists() else []
        query = rest + ("?" + request.query_string.decode() if request.query_string else "")
        answer = search(resources, query) if file.exists() or "/" not in rest else None
        if answer is None:
            return Response("{}", status=404, mimetype="application/fhir+json")(environ, start_response)
        return Response(json.dumps(answer), mimetype="application/fhir+json")(environ, start_response)


@pytest.fixture
def fhir_server(tmp_path: Path) -> Iterator[tuple[FhirFiles, str]]:
    folder = tmp_path / "fhir-files"
    folder.mkdir()
    files = FhirFiles(folder)
    server = make_server("127.0.0.1", 0, files, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield files, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def fetch_body(hook: str, pid: str, origin: str, granted: str = "ehr-granted-token-1", **extra: Any) -> dict[str, Any]:
    authorization = {
        "access_token": granted,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "oncotwin-cds",
    }
    return hook_body(hook, pid, fhirServer=f"{origin}/fhir", fhirAuthorization=authorization, **extra)


# --- helpers on responses -------------------------------------------------------------------------


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)[:800]
    body = response.get_json()
    for card in body["cards"]:
        assert UUID.match(card["uuid"])
        assert 0 < len(card["summary"]) < 140
        assert card["indicator"] in {"info", "warning", "critical"}
        assert card["source"]["label"]
        assert "Traceback" not in card["detail"]
        if card.get("suggestions"):
            assert card["selectionBehavior"] in {"at-most-one", "any"}
    return body


def crd(resource: dict[str, Any]) -> dict[str, Any]:
    ext = next(e for e in resource["extension"] if e["url"] == CRD_COVERAGE_INFORMATION)
    subs: dict[str, Any] = {}
    for sub in ext["extension"]:
        value = next(v for k, v in sub.items() if k.startswith("value"))
        subs.setdefault(sub["url"], []).append(value)
    return subs


def error(response: Any, status: int, text: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "message", "requestId"}
    assert "Traceback" not in body["message"] and 'File "' not in body["message"]
    assert text in body["message"], body["message"]
    return body


# === discovery ======================================================================================


def test_discovery_publishes_one_hook_per_service_with_prefetch_templates(cds):
    response = cds.http.get("/cds-services")  # no token of any kind: discovery holds no patient data
    assert response.status_code == 200
    services = cds.discovery()
    assert {sid: s["hook"] for sid, s in services.items()} == {
        "oncotwin-navigation": "patient-view",
        "oncotwin-necessity-select": "order-select",
        "oncotwin-necessity-sign": "order-sign",
    }
    for service in services.values():
        assert service["title"] and service["description"]
        assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        assert service["prefetch"]["conditions"] == "Condition?patient={{context.patientId}}"
        assert "Observation?patient={{context.patientId}}&category=laboratory" in service["prefetch"].values()
        assert "MedicationRequest?patient={{context.patientId}}" in service["prefetch"].values()
        assert all("{{context.patientId}}" in t for t in service["prefetch"].values())
    assert "coverage" in services["oncotwin-necessity-sign"]["prefetch"]


# === patient-view ===================================================================================


@requires_data
@pytest.mark.parametrize(
    ("patient", "pathways"),
    [
        ("Austin_Franecki", ["Non-small cell lung cancer"]),
        ("Sherman_McGlynn", ["Prostate cancer", "Small cell lung cancer"]),
    ],
)
def test_patient_view_from_prefetch_of_real_synthea_patients(cds, patient, pathways):
    resources = server_style(synthea(patient))
    pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    service = cds.discovery()["oncotwin-navigation"]
    body = ok(
        cds.post("oncotwin-navigation", hook_body("patient-view", pid, prefetch=prefetch(service, resources, pid)))
    )
    assert [c["summary"].split(":")[0] for c in body["cards"]] == pathways  # one card per pathway
    for card in body["cards"]:
        # Both Synthea patients have died: the card shows the death and proposes nothing.
        assert "Patient deceased" in card["summary"] and card["indicator"] == "info"
        assert "**Next steps**" not in card["detail"] and "overdue" not in card["detail"]
        assert card["source"]["url"].startswith("https://")
        assert card["links"] == [
            {"label": "Open in the OncoTwin dashboard", "url": f"{BASE}/dashboard/patients/{pid}", "type": "absolute"}
        ]
    if patient == "Austin_Franecki":
        assert body["cards"][0]["summary"].startswith("Non-small cell lung cancer: Patient deceased (1989-07-25)")
        assert "**Off-pathway therapy**" in body["cards"][0]["detail"]  # cisplatin + paclitaxel for stage I
    assert "systemActions" not in body
    assert cds.calls == Counter({"gather": 1, "navigate": 1})


def test_patient_view_from_prefetch_of_constructed_mcode_data(cds):
    resources = nsclc_patient("positive")
    service = cds.discovery()["oncotwin-navigation"]
    pre = prefetch(service, resources, "egfr-1")
    assert pre["surveyObservations"]["entry"][0]["resource"]["id"] == "stage-1"
    pre["user"] = "123"  # a key this service never asked for: ignored, whatever its shape
    body = ok(cds.post("oncotwin-navigation", hook_body("patient-view", "egfr-1", prefetch=pre)))
    (card,) = body["cards"]
    assert card["summary"] == "Non-small cell lung cancer: at Staging (2 gaps)"
    assert card["indicator"] == "warning"  # an overdue step and a missing work-up
    assert "- Biomarker testing (EGFR, ALK, PD-L1) due 2024-02-03 **overdue**" in card["detail"]
    assert "missing-prerequisite: Diagnostic work-up not on record" in card["detail"]


def test_patient_view_fetches_from_the_fhir_server_with_the_granted_token(make_cds, fhir_server):
    files, origin = fhir_server
    cds = make_cds(CDS_ALLOWED_FHIR_SERVERS=f"{origin}/fhir")
    files.store(nsclc_patient("positive"))
    body = ok(cds.post("oncotwin-navigation", fetch_body("patient-view", "egfr-1", origin)))
    (card,) = body["cards"]
    assert card["summary"] == "Non-small cell lung cancer: at Staging (2 gaps)"  # as from prefetch
    assert files.paths[0] == "/fhir/Patient/egfr-1" and "/fhir/Condition" in files.paths
    assert files.authorizations and set(files.authorizations) == {"Bearer ehr-granted-token-1"}


def test_prefetch_missing_required_keys_is_completed_from_the_server(make_cds, fhir_server):
    files, origin = fhir_server
    cds = make_cds(CDS_ALLOWED_FHIR_SERVERS=f"{origin}/fhir")
    resources = nsclc_patient("positive")
    files.store(resources)
    partial = {"patient": resources[0]}  # the client satisfied one template only
    ok(cds.post("oncotwin-navigation", fetch_body("patient-view", "egfr-1", origin, prefetch=partial)))
    assert "/fhir/Observation" in files.paths


def test_412_when_neither_prefetch_nor_fhir_server(cds):
    response = cds.post("oncotwin-navigation", hook_body("patient-view", "egfr-1"))
    error(response, 412, "prefetch lacks conditions")
    assert cds.calls == Counter({"gather": 1})  # looked for data, evaluated nothing


def test_412_when_fhir_server_is_not_allowed(cds, fhir_server):
    _, origin = fhir_server  # http and not listed in CDS_ALLOWED_FHIR_SERVERS
    error(cds.post("oncotwin-navigation", fetch_body("patient-view", "egfr-1", origin)), 412, "not an allowed")
    assert cds.calls["navigate"] == 0


def test_412_when_the_fhir_server_refuses(make_cds, fhir_server):
    files, origin = fhir_server
    cds = make_cds(CDS_ALLOWED_FHIR_SERVERS=f"{origin}/fhir")
    files.store([r for r in nsclc_patient("positive") if r["resourceType"] != "Patient"])  # Patient/egfr-1: 404
    error(cds.post("oncotwin-navigation", fetch_body("patient-view", "egfr-1", origin)), 412, "patient not found")


# === order-select / order-sign ======================================================================


@pytest.mark.parametrize(
    ("egfr", "determination", "indicator", "covered", "doc_needed"),
    [
        ("positive", "meets", "info", "covered", ["no-doc"]),
        (None, "insufficient documentation", "warning", "conditional", ["clinical"]),
        ("negative", "does not meet", "warning", "not-covered", None),
    ],
)
def test_order_select_from_prefetch_carries_the_crd_extension(cds, egfr, determination, indicator, covered, doc_needed):
    selected = draft(*OSIMERTINIB)
    other = draft("draft-ondansetron", "26225", "ondansetron")
    service = cds.discovery()["oncotwin-necessity-select"]
    body = hook_body(
        "order-select",
        "egfr-1",
        context={"selections": ["MedicationRequest/draft-osi"], "draftOrders": bundle([selected, other])},
        prefetch=prefetch(service, [*nsclc_patient(egfr), COVERAGE], "egfr-1"),
    )
    answer = ok(cds.post("oncotwin-necessity-select", body))
    (card,) = answer["cards"]  # the selected order only
    assert card["summary"].startswith("osimertinib: ")
    assert card["indicator"] == indicator
    assert f"**Determination:** {determination}" in card["detail"]
    (action,) = answer["systemActions"]
    assert action["type"] == "update"
    resource = action["resource"]
    assert (
        resource["id"] == "draft-osi" and resource["medicationCodeableConcept"] == selected["medicationCodeableConcept"]
    )
    subs = crd(resource)
    assert subs["covered"] == [covered]
    assert subs.get("doc-needed") == doc_needed
    assert subs["date"] == [date.today().isoformat()]
    assert UUID.match(subs["coverage-assertion-id"][0])
    assert subs["coverage"] == [{"reference": "Coverage/cov-1"}]
    assert subs.get("info-needed") == (["OTH"] if covered == "conditional" else None)  # crd-ci-q3
    assert "not a payer determination" in subs["reason"][0]["text"]
    if egfr == "positive":
        assert "suggestions" not in card
    if egfr is None:
        assert "EGFR" in card["summary"] and "**Not documented**" in card["detail"]
    assert cds.calls == Counter({"gather": 1, "assess": 1})


def test_does_not_meet_suggests_the_satisfied_options_of_the_same_step(cds):
    service = cds.discovery()["oncotwin-necessity-sign"]
    original = draft(*OSIMERTINIB, requester={"reference": "Practitioner/dr-1"})
    body = hook_body(
        "order-sign",
        "egfr-1",
        context={"draftOrders": bundle([original])},
        prefetch=prefetch(service, nsclc_patient("negative"), "egfr-1"),
    )
    (card,) = ok(cds.post("oncotwin-necessity-sign", body))["cards"]
    assert "does not meet" in card["summary"] and "EGFR positive" in card["summary"]
    assert card["source"]["url"].startswith("https://")
    assert card["selectionBehavior"] == "at-most-one"
    # "Carboplatin or cisplatin + pemetrexed + pembrolizumab" is two alternatives, not four drugs
    assert [s["label"] for s in card["suggestions"]] == [
        "Order Carboplatin + Pemetrexed + Pembrolizumab instead",
        "Order Cisplatin + Pemetrexed + Pembrolizumab instead",
        "Order Carboplatin + Paclitaxel + Pembrolizumab instead",
    ]
    first = card["suggestions"][0]
    creates = [a for a in first["actions"] if a["type"] == "create"]
    codes = {a["resource"]["medicationCodeableConcept"]["coding"][0]["code"] for a in creates}
    assert codes == {"40048", "68446", "1547545"}  # carboplatin, pemetrexed, pembrolizumab (RxNorm)
    for action in creates:
        created = action["resource"]
        assert created["resourceType"] == "MedicationRequest" and created["status"] == "draft"
        assert created["subject"] == {"reference": "Patient/egfr-1"}
        assert created["requester"] == {"reference": "Practitioner/dr-1"}
    assert first["actions"][-1] == {
        "type": "delete",
        "description": "Remove the draft order that does not meet the pathway",
        "resourceId": "MedicationRequest/draft-osi",
    }
    assert all(UUID.match(s["uuid"]) for s in card["suggestions"])


COVERAGE = {
    "resourceType": "Coverage",
    "id": "cov-1",
    "status": "active",
    "beneficiary": {"reference": "Patient/egfr-1"},
    "payor": [{"display": "Example Health Plan"}],
}


def test_order_sign_evaluates_every_draft_and_references_coverage(cds):
    service = cds.discovery()["oncotwin-necessity-sign"]
    coverage = COVERAGE
    drafts = [draft(*OSIMERTINIB), draft("draft-pembro", "1547545", "pembrolizumab")]
    body = hook_body(
        "order-sign",
        "egfr-1",
        context={"draftOrders": bundle(drafts)},
        prefetch=prefetch(service, [*nsclc_patient("positive"), coverage], "egfr-1"),
    )
    answer = ok(cds.post("oncotwin-necessity-sign", body))
    assert [c["summary"].split(":")[0] for c in answer["cards"]] == ["osimertinib", "pembrolizumab"]
    assert [a["resource"]["id"] for a in answer["systemActions"]] == ["draft-osi", "draft-pembro"]
    assert crd(answer["systemActions"][0]["resource"])["coverage"] == [{"reference": "Coverage/cov-1"}]
    assert crd(answer["systemActions"][1]["resource"])["covered"] == ["not-covered"]  # EGFR+: no pembrolizumab


def test_without_a_coverage_no_crd_assertion_is_sent(cds):
    # CRD STU 2.1: the coverage sub-extension is 1..1 Reference(Coverage); no Coverage, no assertion
    service = cds.discovery()["oncotwin-necessity-sign"]
    body = hook_body(
        "order-sign",
        "egfr-1",
        context={"draftOrders": bundle([draft(*OSIMERTINIB)])},
        prefetch=prefetch(service, nsclc_patient("positive"), "egfr-1"),
    )
    answer = ok(cds.post("oncotwin-necessity-sign", body))
    assert len(answer["cards"]) == 1 and "systemActions" not in answer


@requires_data
@pytest.mark.parametrize(
    ("patient", "drug", "expected"),
    [("Micah_Schinner", "oxaliplatin", "meets"), ("Andy_Schaden", "DOCEtaxel", "insufficient-documentation")],
)
def test_order_sign_from_prefetch_of_real_synthea_orders(cds, patient, drug, expected):
    resources = server_style(synthea(patient))
    pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    stored = next(
        r
        for r in resources
        if r["resourceType"] == "MedicationRequest"
        and r["status"] == "active"
        and drug in json.dumps(r.get("medicationCodeableConcept"))
    )
    being_signed = {**stored, "id": "draft-1", "status": "draft"}
    service = cds.discovery()["oncotwin-necessity-sign"]
    body = hook_body(
        "order-sign",
        pid,
        context={"draftOrders": bundle([being_signed])},
        prefetch=prefetch(service, [*resources, {**COVERAGE, "beneficiary": {"reference": f"Patient/{pid}"}}], pid),
    )
    answer = ok(cds.post("oncotwin-necessity-sign", body))
    (card,) = answer["cards"]
    assert drug in card["summary"]
    words = {"meets": "meets the", "insufficient-documentation": "not documented"}[expected]
    assert words in card["summary"]
    covered = {"meets": "covered", "insufficient-documentation": "conditional"}[expected]
    assert crd(answer["systemActions"][0]["resource"])["covered"] == [covered]


def test_order_select_and_sign_fetch_from_the_fhir_server(make_cds, fhir_server):
    files, origin = fhir_server
    cds = make_cds(CDS_ALLOWED_FHIR_SERVERS=f"{origin}/fhir")
    files.store(nsclc_patient(None))
    drafts = bundle([draft(*OSIMERTINIB)])
    covered = {"coverage": bundle([COVERAGE])}  # the optional key, prefetched; the record is fetched
    select = fetch_body(
        "order-select",
        "egfr-1",
        origin,
        context={"selections": ["MedicationRequest/draft-osi"], "draftOrders": drafts},
        prefetch=covered,
    )
    sign = fetch_body(
        "order-sign", "egfr-1", origin, granted="ehr-granted-token-2", context={"draftOrders": drafts}, prefetch=covered
    )
    for service, body in (("oncotwin-necessity-select", select), ("oncotwin-necessity-sign", sign)):
        answer = ok(cds.post(service, body))
        (card,) = answer["cards"]
        assert "pathway criteria not documented" in card["summary"]
        assert crd(answer["systemActions"][0]["resource"])["doc-needed"] == ["clinical"]
    assert set(files.authorizations) == {"Bearer ehr-granted-token-1", "Bearer ehr-granted-token-2"}
    assert cds.calls["assess"] == 2


def test_order_requests_that_do_not_fit_are_400(cds):
    service = cds.discovery()["oncotwin-necessity-select"]
    pre = prefetch(service, nsclc_patient("positive"), "egfr-1")
    foreign = draft(*OSIMERTINIB, pid="someone-else")
    not_drafted = hook_body(
        "order-select",
        "egfr-1",
        context={"selections": ["MedicationRequest/nope"], "draftOrders": bundle([draft(*OSIMERTINIB)])},
        prefetch=pre,
    )
    error(cds.post("oncotwin-necessity-select", not_drafted), 400, "not in context.draftOrders")
    other_patient = hook_body("order-select", "egfr-1", context={"draftOrders": bundle([foreign])}, prefetch=pre)
    error(cds.post("oncotwin-necessity-select", other_patient), 400, "is not for context.patientId")
    wrong_hook = hook_body("patient-view", "egfr-1", prefetch=pre)
    error(cds.post("oncotwin-necessity-select", wrong_hook), 400, "answers the order-select hook")
    odd_value = hook_body("order-select", "egfr-1", prefetch={**pre, "conditions": "Condition/1"})
    error(cds.post("oncotwin-necessity-select", odd_value), 400, "prefetch 'conditions' must be")
    no_context = {"hook": "order-select", "hookInstance": "x"}
    error(cds.post("oncotwin-necessity-select", no_context), 400, "(context)")
    assert cds.calls["assess"] == 0


# === security =========================================================================================


def _none_token(path: str, key: Key) -> str:
    return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}.{b64(claims_for(path))}."


def _hs256(path: str, key: Key) -> str:
    secret = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )  # the classic confusion: the public key used as an HMAC secret
    return jwt.encode(claims_for(path), secret.decode()[:64] * 2, algorithm="HS256", headers={"kid": key.kid})


REJECTIONS: dict[str, tuple[Callable[[str, dict[str, Key], str], str], str]] = {
    "unsigned (alg none)": (lambda p, k, jku: _none_token(p, k["es384"]), "token algorithm must be one of"),
    "HMAC (HS256)": (lambda p, k, jku: _hs256(p, k["es384"]), "token algorithm must be one of"),
    "wrong aud": (
        lambda p, k, jku: sign(k["es384"], claims_for(p, aud=f"{BASE}/cds-services/another")),
        "audience",
    ),
    "aud of another host": (
        lambda p, k, jku: sign(k["es384"], claims_for(p, aud=f"https://evil.example{p}")),
        "audience",
    ),
    "unknown kid": (lambda p, k, jku: sign(k["stranger"], claims_for(p)), "unknown key"),
    "expired": (
        lambda p, k, jku: sign(k["es384"], claims_for(p, iat=int(time.time()) - 900, exp=int(time.time()) - 300)),
        "expired",
    ),
    "unlisted iss": (lambda p, k, jku: sign(k["es384"], claims_for(p, iss="https://rogue.example")), "issuer"),
    "jku not allow-listed": (
        lambda p, k, jku: sign(k["es384"], claims_for(p), jku="https://rogue.example/jwks.json"),
        "jku",
    ),
    "no jti": (lambda p, k, jku: sign(k["es384"], claims_for(p, jti=None)), "'jti'"),
    "no exp": (lambda p, k, jku: sign(k["es384"], claims_for(p, exp=None)), "'exp'"),
    "iat in the future": (
        lambda p, k, jku: sign(k["es384"], claims_for(p, iat=int(time.time()) + 600, exp=int(time.time()) + 900)),
        "not yet valid",
    ),
    "forged signature": (
        lambda p, k, jku: sign(k["stranger"], claims_for(p), kid="ehr-es384"),
        "signature",
    ),
    "ES384 header, RSA key": (lambda p, k, jku: sign(k["es384"], claims_for(p), kid="ehr-rs384"), "does not match"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
@pytest.mark.parametrize("service", ["oncotwin-navigation", "oncotwin-necessity-sign"])
def test_every_bad_client_jwt_is_401_and_nothing_is_evaluated(cds, keys, case, service):
    make_token, message = REJECTIONS[case]
    path = f"/cds-services/{service}"
    hook = "patient-view" if service == "oncotwin-navigation" else "order-sign"
    pre = prefetch(cds.discovery()[service], nsclc_patient("positive"), "egfr-1")
    body = hook_body(hook, "egfr-1", prefetch=pre, context={"draftOrders": bundle([draft(*OSIMERTINIB)])})
    response = cds.post(service, body, token=make_token(path, keys, ""))
    error(response, 401, message)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert cds.calls == Counter()  # not even the data was read


def test_replayed_jti_is_401_and_not_evaluated_twice(cds):
    path = "/cds-services/oncotwin-navigation"
    token = sign(cds.key, claims_for(path))
    pre = prefetch(cds.discovery()["oncotwin-navigation"], nsclc_patient("positive"), "egfr-1")
    body = hook_body("patient-view", "egfr-1", prefetch=pre)
    ok(cds.post("oncotwin-navigation", body, token=token))
    error(cds.post("oncotwin-navigation", body, token=token), 401, "already used")
    assert cds.calls["navigate"] == 1


def test_missing_or_user_tokens_are_401(cds, mint):
    pre = prefetch(cds.discovery()["oncotwin-navigation"], nsclc_patient("positive"), "egfr-1")
    data = json.dumps(hook_body("patient-view", "egfr-1", prefetch=pre))
    response = cds.http.post("/cds-services/oncotwin-navigation", data=data, headers=JSON)
    error(response, 401, "missing bearer token")
    user = {"Authorization": f"Bearer {mint(['navigation.read'])}"}  # an OncoTwin user token (ES256, local key)
    error(cds.http.post("/cds-services/oncotwin-navigation", data=data, headers=JSON | user), 401)
    assert cds.calls == Counter()
    # the exemption is for the CDS views only: the rest of the app still wants a user token
    assert cds.http.get("/ready").status_code == 401
    assert cds.http.get("/ready", headers=user).status_code == 200


def test_rs384_clients_are_accepted(make_cds):
    cds = make_cds(key="rs384")
    pre = prefetch(cds.discovery()["oncotwin-navigation"], nsclc_patient("positive"), "egfr-1")
    ok(cds.post("oncotwin-navigation", hook_body("patient-view", "egfr-1", prefetch=pre)))


def test_algorithms_outside_the_configured_set_are_refused(make_cds):
    cds = make_cds(CDS_JWT_ALGORITHMS="RS384")  # this deployment's EHR signs with RSA only
    pre = prefetch(cds.discovery()["oncotwin-navigation"], nsclc_patient("positive"), "egfr-1")
    error(cds.post("oncotwin-navigation", hook_body("patient-view", "egfr-1", prefetch=pre)), 401, "RS384")


def test_allow_listed_jku_is_fetched_and_trusted(make_cds, keys, fhir_server):
    files, origin = fhir_server
    (files.folder / "ehr.json").write_text(json.dumps({"keys": [keys["jku"].jwk]}))
    jku = f"{origin}/jwks/ehr.json"
    cds = make_cds(key="jku", CDS_ALLOWED_JKU=jku)
    pre = prefetch(cds.discovery()["oncotwin-navigation"], nsclc_patient("positive"), "egfr-1")
    path = "/cds-services/oncotwin-navigation"
    token = sign(keys["jku"], claims_for(path), jku=jku)
    ok(cds.post("oncotwin-navigation", hook_body("patient-view", "egfr-1", prefetch=pre), token=token))
    assert "/jwks/ehr.json" in files.paths
    # the same key without the jku header is unknown to the configured JWKS file
    error(cds.post("oncotwin-navigation", hook_body("patient-view", "egfr-1", prefetch=pre)), 401, "unknown key")


def test_unconfigured_service_refuses_every_hook_call(make_cds, keys):
    cds = make_cds(configured=False)
    assert cds.discovery()  # discovery stays open
    pre = prefetch(cds.discovery()["oncotwin-navigation"], nsclc_patient("positive"), "egfr-1")
    response = cds.post("oncotwin-navigation", hook_body("patient-view", "egfr-1", prefetch=pre))
    error(response, 401, "CDS_JWKS_FILE")
    assert cds.calls == Counter()


def test_cds_settings_are_validated_naming_the_variable(tmp_path, jwks_file):
    base = {"ONCOTWIN_DATA_DIR": str(tmp_path)}
    full = base | {"CDS_JWKS_FILE": str(jwks_file), "CDS_ALLOWED_ISSUERS": ISSUER, "CDS_BASE_URL": BASE}
    for env, variable in (
        (full | {"CDS_JWT_ALGORITHMS": "ES384,HS256"}, "CDS_JWT_ALGORITHMS"),
        (full | {"CDS_JWT_ALGORITHMS": "none"}, "CDS_JWT_ALGORITHMS"),
        (base | {"CDS_JWKS_FILE": str(jwks_file), "CDS_BASE_URL": BASE}, "CDS_ALLOWED_ISSUERS"),
        (base | {"CDS_JWKS_FILE": str(jwks_file), "CDS_ALLOWED_ISSUERS": ISSUER}, "CDS_BASE_URL"),
        (full | {"CDS_ALLOWED_JKU": "http://ehr.example.org/jwks"}, "CDS_ALLOWED_JKU"),
        (full | {"CDS_JWKS_FILE": str(tmp_path / "missing.json")}, "CDS_JWKS_FILE"),
        (full | {"CDS_LEEWAY_SECONDS": "soon"}, "CDS_LEEWAY_SECONDS"),
        (full | {"REDIS_URL": "http://localhost:6379"}, "REDIS_URL"),
        (full | {"DASHBOARD_BASE_URL": "ftp://x"}, "DASHBOARD_BASE_URL"),
    ):
        with pytest.raises(ConfigError, match=variable):
            load_settings(env)
    settings = load_settings(full)
    assert settings.cds_algorithms == ("RS384", "ES384") and settings.cds_leeway_s == 30
    assert settings.dashboard_base_url == BASE and settings.redis_url is None


def test_errors_are_json_without_exception_text(cds, monkeypatch):
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("Jane Doe, MRN 12345")

    monkeypatch.setattr(cds_app, "navigate", broken)
    pre = prefetch(cds.discovery()["oncotwin-navigation"], nsclc_patient("positive"), "egfr-1")
    body = error(cds.post("oncotwin-navigation", hook_body("patient-view", "egfr-1", prefetch=pre)), 500)
    assert "Jane" not in json.dumps(body)
    error(cds.post("no-such-service", hook_body("patient-view", "egfr-1")), 404, "no such CDS Service")
    path = "/cds-services/oncotwin-navigation"
    token = sign(cds.key, claims_for(path))
    response = cds.http.post(path, data="{not json", headers=JSON | {"Authorization": f"Bearer {token}"})
    error(response, 400, "not JSON")


# === feedback ==========================================================================================


def test_feedback_is_accepted_validated_and_authenticated(cds, caplog):
    path = "/cds-services/oncotwin-necessity-sign/feedback"
    feedback = {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
                "outcomeTimestamp": "2026-01-05T10:00:00Z",
            },
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"system": "urn:oncotwin:cds-override-reason", "code": "patient-preference"},
                    "userComment": "Jane Doe prefers to wait",
                },
                "outcomeTimestamp": "2026-01-05T10:01:00Z",
            },
        ]
    }

    def post(body: Any, token: str | None = None) -> Any:
        token = token or sign(cds.key, claims_for(path))
        return cds.http.post(path, data=json.dumps(body), headers=JSON | {"Authorization": f"Bearer {token}"})

    with caplog.at_level("INFO", logger="oncotwin.cds"):
        response = post(feedback)
    assert response.status_code == 200 and response.get_json() == {"received": 2}
    assert "patient-preference" in caplog.text and "Jane" not in caplog.text
    accepted_without_ids = {"feedback": [{**feedback["feedback"][0], "acceptedSuggestions": []}]}
    error(post(accepted_without_ids), 400, "acceptedSuggestions is required")
    error(post({"feedback": [{"card": "x", "outcome": "maybe", "outcomeTimestamp": "2026-01-05T10:00:00Z"}]}), 400)
    wrong_aud = sign(cds.key, claims_for("/cds-services/oncotwin-necessity-sign"))  # the service's, not /feedback
    error(post(feedback, token=wrong_aud), 401, "audience")


# === replay stores ========================================================================================


def test_memory_replay_store_forgets_a_jti_only_after_it_expires():
    now = [1000.0]
    store = MemoryReplayStore(max_entries=2, clock=lambda: now[0])
    assert store.first_use("a", 60)
    assert not store.first_use("a", 60)
    now[0] += 59
    assert not store.first_use("a", 60)
    now[0] += 2
    assert store.first_use("a", 60)  # expired token: its jti may be forgotten
    assert store.first_use("b", 60)
    with pytest.raises(Exception, match="full"):
        store.first_use("c", 60)  # fail closed rather than forget live entries


def _redis_or_skip() -> Any:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError):
        pytest.skip(f"no Redis reachable at {REDIS_URL}")
    return client


def test_redis_replay_store_on_the_real_local_redis():
    client = _redis_or_skip()
    prefix = f"oncotwin-test:{uuid.uuid4().hex}:"
    store = RedisReplayStore(REDIS_URL, prefix=prefix)
    try:
        assert store.first_use("jti-1", 120)
        assert not store.first_use("jti-1", 120)
        assert store.first_use("jti-2", 120)
        ttl = client.ttl(prefix + "jti-1")
        assert 0 < ttl <= 120
    finally:
        keys = list(client.scan_iter(prefix + "*"))
        if keys:
            client.delete(*keys)


def test_a_token_replayed_to_another_worker_is_refused_through_redis(make_cds):
    client = _redis_or_skip()
    first, second = make_cds(REDIS_URL=REDIS_URL), make_cds(REDIS_URL=REDIS_URL)  # two workers, one Redis
    path = "/cds-services/oncotwin-navigation"
    claims = claims_for(path)
    token = sign(first.key, claims)
    pre = prefetch(first.discovery()["oncotwin-navigation"], nsclc_patient("positive"), "egfr-1")
    body = hook_body("patient-view", "egfr-1", prefetch=pre)
    stored = "oncotwin:cds:jti:" + hashlib.sha256(f"{ISSUER}\n{claims['jti']}".encode()).hexdigest()
    try:
        ok(first.post("oncotwin-navigation", body, token=token))
        assert 0 < client.ttl(stored) <= 300 + 30 + 1  # kept until the token expires (+ leeway)
        error(second.post("oncotwin-navigation", body, token=token), 401, "already used")
    finally:
        client.delete(stored)
