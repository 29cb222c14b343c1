"""A hook call's data -> one ``PatientRecord`` (plus the draft orders it is about).

Sources, per the spec: the ``prefetch`` the client filled (a resource or a searchset Bundle per
key; ``null`` = the client found nothing), and for required keys the client left out, the client's
``fhirServer`` with the ``fhirAuthorization`` token it gave us (the whole patient compartment via
``FhirServerClient``: paging, origin-locked next links, timeouts). Neither: 412 Precondition Failed.

``context.draftOrders`` joins the resources so ingestion turns them into ``record.orders``; a draft
for another patient is refused rather than silently evaluated against this one.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from services.cds_hooks.catalog import CdsService
from services.cds_hooks.models import HookRequest
from shared.config import Settings
from shared.errors import InvalidInput, NotFound, OncoTwinError, UpstreamError
from shared.fhir.ingest import load_resources
from shared.fhir.record import PatientRecord
from shared.fhir.server import FhirServerClient

log = logging.getLogger(__name__)
ORDER_TYPES = frozenset({"MedicationRequest", "ServiceRequest"})
MAX_DRAFT_ORDERS = 200


class PreconditionFailed(OncoTwinError):
    """CDS Hooks 412: the service cannot get the FHIR data it needs (no prefetch, no usable server)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, [], 412, "incomplete")


@dataclass
class HookData:
    record: PatientRecord
    drafts: dict[str, dict[str, Any]]  # "MedicationRequest/id" -> the draft as the client sent it
    coverage: dict[str, Any] | None  # the patient's Coverage, if the client gave or serves one
    source: str  # prefetch | fhir-server | prefetch+fhir-server (for the log)


def gather(request: HookRequest, service: CdsService, settings: Settings) -> HookData:
    patient_id = request.context.patient_id
    drafts = _drafts(request, patient_id)  # a bad draft is a 400 before any network call
    resources, satisfied = _prefetched(request, service, patient_id)
    missing = sorted(service.required - satisfied)
    source = "prefetch"
    if missing:
        resources = _merge(_fetch(request, settings, patient_id, missing), resources)
        source = "fhir-server" if not satisfied else "prefetch+fhir-server"
    patient_data = [r for r in resources if _key(r) not in drafts]  # the draft being edited wins
    usable = patient_data + [_attributed(d, patient_id) for d in drafts.values()]
    record = load_resources(usable, origin="cds", strict=False, reuse=True).record(patient_id)
    return HookData(record, drafts, _coverage(resources, patient_id), source)


def _key(resource: dict[str, Any]) -> str | None:
    rid = resource.get("id")
    return f"{resource.get('resourceType')}/{rid}" if isinstance(rid, str) and rid else None


def _entries(value: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """A prefetch value's resources: the resource itself, or a (searchset) Bundle's entries."""
    if not isinstance(value.get("resourceType"), str):
        raise InvalidInput(f"prefetch {key!r} is not a FHIR resource")
    if value["resourceType"] != "Bundle":
        return [value]
    entries = value.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidInput(f"prefetch {key!r} Bundle.entry is not a list")
    out: list[dict[str, Any]] = []
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        search = entry.get("search") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        if resource["resourceType"] == "OperationOutcome" or (
            isinstance(search, dict) and search.get("mode") == "outcome"
        ):
            continue
        out.extend(_entries(resource, key) if resource["resourceType"] == "Bundle" else [resource])
    return out


def _prefetched(request: HookRequest, service: CdsService, patient_id: str) -> tuple[list[dict[str, Any]], set[str]]:
    """Resources from the template keys the client answered (others it sent are ignored), and
    which keys count as answered. A null or absent Patient never counts: nothing works without it."""
    resources: list[dict[str, Any]] = []
    satisfied: set[str] = set()
    for key, value in (request.prefetch or {}).items():
        if key not in service.prefetch:
            continue
        if value is not None and not isinstance(value, dict):
            raise InvalidInput(f"prefetch {key!r} must be a FHIR resource, a Bundle or null")
        found = [] if value is None else _entries(value, key)
        if key == "patient":
            patients = [r for r in found if r.get("resourceType") == "Patient"]
            if not patients:
                continue
            if patients[0].get("id") != patient_id:
                raise InvalidInput("prefetch patient is not context.patientId")
        satisfied.add(key)
        resources.extend(found)
    return resources, satisfied


def _server_allowed(url: str, settings: Settings) -> bool:
    allowed = settings.cds_allowed_fhir_servers
    if allowed:
        return any(url == a or url.startswith(a + "/") for a in allowed)
    return urlsplit(url).scheme == "https"  # unlisted: https only (production data must be)


def _fetch(request: HookRequest, settings: Settings, patient_id: str, missing: list[str]) -> list[dict[str, Any]]:
    what = f"prefetch lacks {', '.join(missing)}"
    if request.fhir_server is None or request.fhir_authorization is None:
        raise PreconditionFailed(f"{what}, and the request has no fhirServer with fhirAuthorization to fetch it")
    if not _server_allowed(request.fhir_server, settings):
        raise PreconditionFailed(f"{what}, and fhirServer is not an allowed FHIR server (CDS_ALLOWED_FHIR_SERVERS)")
    client = FhirServerClient(
        request.fhir_server,
        token=request.fhir_authorization.access_token,
        timeout_s=settings.cds_fhir_timeout_s,
        max_pages=settings.fhir_page_limit,
        max_retries=1,  # a hook answers in about a second: one quick retry, no long backoff
        backoff_s=0.2,
        max_retry_after_s=1.0,
    )
    try:
        with client:
            return client.patient_resources(patient_id)
    except (UpstreamError, NotFound, InvalidInput) as exc:
        log.info("CDS fetch from fhirServer failed: %s", type(exc).__name__)
        raise PreconditionFailed(f"{what}, and fetching it from fhirServer failed: {exc.message}") from None


def _merge(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for resource in (*first, *second):
        key = _key(resource)
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        out.append(resource)
    return out


def _subject_patient(resource: dict[str, Any], field_name: str = "subject") -> str | None:
    ref = resource.get(field_name)
    value = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(value, str):
        return None
    parts = value.rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == "Patient" else ""


def _drafts(request: HookRequest, patient_id: str) -> dict[str, dict[str, Any]]:
    bundle = request.context.draft_orders
    if bundle is None:
        return {}
    if bundle.get("resourceType") != "Bundle":
        raise InvalidInput("context.draftOrders must be a Bundle")
    drafts: dict[str, dict[str, Any]] = {}
    for resource in _entries(bundle, "draftOrders"):
        if resource.get("resourceType") not in ORDER_TYPES:
            continue  # NutritionOrder, DeviceRequest...: no pathway speaks of them
        key = _key(resource)
        if key is None:
            raise InvalidInput("every draft order in context.draftOrders needs an id")
        subject = _subject_patient(resource)
        if subject is not None and subject != patient_id:
            raise InvalidInput(f"draft order {key} is not for context.patientId")
        drafts[key] = resource
    if len(drafts) > MAX_DRAFT_ORDERS:
        raise InvalidInput(f"more than {MAX_DRAFT_ORDERS} draft orders")
    return drafts


def _attributed(draft: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """The draft as ingestion needs it: a subject (drafts may omit it while being written)."""
    if _subject_patient(draft) is not None:
        return draft
    copied = copy.deepcopy(draft)
    copied["subject"] = {"reference": f"Patient/{patient_id}"}
    return copied


def _coverage(resources: list[dict[str, Any]], patient_id: str) -> dict[str, Any] | None:
    for resource in resources:
        if resource.get("resourceType") != "Coverage" or resource.get("status", "active") != "active":
            continue
        if _subject_patient(resource, "beneficiary") == patient_id:
            return resource
    return None
