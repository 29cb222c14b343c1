"""Pull one patient's resources from a FHIR R4 server with plain REST searches.

Why plain searches and not ``Patient/$everything`` or bulk export: they are the one part of the
REST API that every R4 server implements, so the ingestion layer works against HAPI, Azure, Google,
Epic sandboxes and small test servers alike. The client stays deliberately small; its job is to be
safe with what it talks to:

* it never lets a server steer our bearer token elsewhere (``next`` links must stay on the origin
  of ``base_url`` and redirects are not followed);
* it retries only what is safe and transient (idempotent GETs on connection errors, 429, 502-504)
  with exponential backoff plus jitter, honouring ``Retry-After`` (urllib3's ``Retry``, shared/http_retry.py);
* it refuses to return a silently truncated record (running past ``max_pages`` is an error), because
  a clinical summary built on half a medication list is worse than none;
* its exceptions and logs carry no URLs, response bodies, tokens or patient data (request URLs
  contain the patient id, so exceptions from ``requests`` are not chained).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import orjson
import requests

from shared.errors import InvalidInput, NotFound, UpstreamError
from shared.http_retry import RetryPolicy, session_with_retries

if TYPE_CHECKING:
    from shared.config import Settings

logger = logging.getLogger(__name__)

# The patient compartment searches the ingestion layer needs, in the order they are pulled.
PATIENT_SEARCHES: tuple[str, ...] = (
    "Condition",
    "Observation",
    "MedicationRequest",
    "MedicationAdministration",
    "MedicationStatement",
    "Procedure",
    "Encounter",
    "DiagnosticReport",
    "DocumentReference",
    "ImagingStudy",
    "ServiceRequest",
    "CarePlan",
)

PAGE_SIZE = 200
# Types whose ``medicationReference`` points at a Medication we must fetch to know the drug.
_MEDICATION_USERS = frozenset({"MedicationRequest", "MedicationAdministration", "MedicationStatement"})
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# What servers answer for a search on a type they do not implement.
_UNSUPPORTED_STATUSES = frozenset({400, 404, 501})
_TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_MEDICATION_REF = re.compile(r"(?:^|/)Medication/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: no origin matches it
        return (scheme, "", -1)
    return (scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme))


class FhirServerClient:
    """A read-only FHIR R4 REST client for pulling patient data.

    ``skipped_types`` lists the ``PATIENT_SEARCHES`` types the server refused to search during the
    latest ``patient_resources`` call; callers can show that the record may be incomplete. One
    client may be shared by threads for reads, but ``skipped_types`` then describes whichever call
    finished last: use one client per pull when that matters.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 20.0,
        max_pages: int = 200,
        session: requests.Session | None = None,
        *,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_retry_after_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if urlsplit(base_url).scheme.lower() not in _DEFAULT_PORTS:
            raise ValueError("FHIR base URL must be an http(s) URL")
        if max_pages < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("max_pages must be >= 1, max_retries >= 0 and timeout_s > 0")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_pages = max_pages
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.skipped_types: list[str] = []
        self._origin = _origin(self.base_url)
        self._owns_session = session is None
        # A Session keeps connections alive across the dozens of page requests of one pull; the retry
        # policy is mounted on it (an injected session gets it mounted too).
        policy = RetryPolicy(
            max_retries,
            status_forcelist=_RETRY_STATUSES,
            allowed_methods=frozenset({"GET"}),
            backoff_base_s=backoff_s,
            max_retry_after_s=max_retry_after_s,
            give_up_on_long_retry_after=True,
            sleep_fn=sleep,
            label="FHIR GET",
        )
        self._session = session_with_retries(policy, session)
        # Headers go on each request, not on the session, so an injected session is left untouched.
        self._headers = {"Accept": "application/fhir+json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_settings(cls, settings: Settings) -> FhirServerClient:
        """The client for the configured server; 503 when none is configured (a deployment choice)."""
        if settings.fhir_base_url is None:
            raise UpstreamError("FHIR_BASE_URL is not configured", status=503)
        return cls(
            settings.fhir_base_url,
            token=settings.fhir_token,
            timeout_s=settings.fhir_timeout_s,
            max_pages=settings.fhir_page_limit,
        )

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> FhirServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ------------------------------------------------------------------------------

    def patient_resources(self, patient_id: str) -> list[dict[str, Any]]:
        """The Patient followed by every resource of the ``PATIENT_SEARCHES`` types that points at it.

        Resources are de-duplicated by type and id (servers repeat ``_include``d resources on every
        page), ``OperationOutcome`` entries are dropped, and Medications referenced by medication
        resources are fetched when the server did not include them.
        """
        if not _FHIR_ID.fullmatch(patient_id):
            raise InvalidInput("patient id is not a valid FHIR id")
        self.skipped_types = []
        response = self._get(f"{self.base_url}/Patient/{patient_id}")
        if response.status_code in (404, 410):
            raise NotFound("patient not found on the FHIR server")
        self._raise_for_status(response)
        patient = self._json(response, "FHIR server returned an invalid Patient")
        if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
            raise UpstreamError("FHIR server returned an invalid Patient")

        collected = _Collected()
        collected.add(patient)
        for resource_type in PATIENT_SEARCHES:
            resources = self._search(resource_type, {"patient": patient_id, "_count": str(PAGE_SIZE)})
            if resources is None:
                self.skipped_types.append(resource_type)
                continue
            for resource in resources:
                collected.add(resource)
        for medication_id in self._missing_medications(collected):
            medication = self._read_optional("Medication", medication_id)
            if medication is not None:
                collected.add(medication)
        if self.skipped_types:
            logger.info("FHIR server does not search %s; record may be partial", ", ".join(self.skipped_types))
        return collected.resources

    def search_patients(self, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """All resources of a ``Patient`` search (every page), for patient pickers."""
        query = {str(k): str(v) for k, v in params.items()}
        query.setdefault("_count", str(PAGE_SIZE))
        found = self._search("Patient", query, skip_unsupported=False)
        collected = _Collected()
        for resource in found or []:
            collected.add(resource)
        return collected.resources

    # -- searching -------------------------------------------------------------------------------

    def _search(
        self, resource_type: str, params: dict[str, str], *, skip_unsupported: bool = True
    ) -> list[dict[str, Any]] | None:
        """Every non-outcome entry of a search, following ``next``; None if the type is unsupported."""
        found: list[dict[str, Any]] = []
        url: str | None = f"{self.base_url}/{resource_type}"
        query: dict[str, str] | None = params
        pages = 0
        while url is not None:
            if pages >= self.max_pages:
                raise UpstreamError(f"FHIR search for {resource_type} exceeded the page limit ({self.max_pages} pages)")
            response = self._get(url, query)
            pages += 1
            if pages == 1 and response.status_code in _UNSUPPORTED_STATUSES:
                if skip_unsupported:
                    response.close()
                    return None
                if response.status_code == 400:
                    raise InvalidInput("FHIR server rejected the search parameters")
            self._raise_for_status(response)
            bundle = self._json(response, "FHIR server returned an invalid search response")
            found.extend(_entries(bundle))
            url, query = self._next_url(bundle), None
        return found

    def _next_url(self, bundle: dict[str, Any]) -> str | None:
        """The ``next`` page link, resolved against base_url and required to stay on its origin."""
        links = bundle.get("link") or []
        if not isinstance(links, list):
            raise UpstreamError("FHIR server returned an invalid search response")
        for link in links:
            if isinstance(link, dict) and link.get("relation") == "next":
                href = link.get("url")
                if not isinstance(href, str) or not href:
                    raise UpstreamError("FHIR server returned an invalid search response")
                absolute = urljoin(self.base_url + "/", href)
                if _origin(absolute) != self._origin:
                    raise UpstreamError("FHIR server sent a next-page link to another server")
                return absolute
        return None

    def _missing_medications(self, collected: _Collected) -> list[str]:
        """Ids of Medications referenced by medication resources that no search returned."""
        wanted: list[str] = []
        for resource in collected.resources:
            if resource.get("resourceType") not in _MEDICATION_USERS:
                continue
            ref = (resource.get("medicationReference") or {}).get("reference")
            if not isinstance(ref, str) or ref.startswith("#"):  # contained: already in the resource
                continue
            if "://" in ref and _origin(ref) != self._origin:  # another server: not ours to call
                continue
            match = _MEDICATION_REF.search(ref)
            if match and not collected.has("Medication", match.group(1)) and match.group(1) not in wanted:
                wanted.append(match.group(1))
        return wanted

    def _read_optional(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """A read where a missing target (dangling reference) is tolerated, not fatal."""
        response = self._get(f"{self.base_url}/{resource_type}/{resource_id}")
        if response.status_code in (404, 410):
            response.close()
            logger.info("FHIR server has no %s for a reference; left unresolved", resource_type)
            return None
        self._raise_for_status(response)
        resource = self._json(response, f"FHIR server returned an invalid {resource_type}")
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            raise UpstreamError(f"FHIR server returned an invalid {resource_type}")
        return resource

    # -- HTTP ------------------------------------------------------------------------------------

    def _get(self, url: str, params: Mapping[str, str] | None = None) -> requests.Response:
        """One GET; the session's retry policy (shared/http_retry.py) retries transient failures and
        the final response is returned as is."""
        try:
            return self._session.get(
                url,
                params=params,
                headers=self._headers,
                timeout=self.timeout_s,
                allow_redirects=False,  # a redirect could carry our token to another server
            )
        except _TRANSIENT_ERRORS:
            raise UpstreamError("FHIR server did not answer in time", status=504) from None
        except requests.RequestException:
            raise UpstreamError("FHIR request failed") from None

    @staticmethod
    def _raise_for_status(response: requests.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        response.close()
        if status in (401, 403):
            raise UpstreamError("FHIR server refused our credentials", status=502)
        if status in _RETRY_STATUSES:
            raise UpstreamError(f"FHIR server is unavailable (HTTP {status})", status=503)
        raise UpstreamError(f"FHIR server failed (HTTP {status})", status=502)

    @staticmethod
    def _json(response: requests.Response, message: str) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise UpstreamError(message) from None


def _entries(bundle: Any) -> list[dict[str, Any]]:
    """The resources of a searchset Bundle, without ``search.mode == outcome`` entries."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise UpstreamError("FHIR server returned an invalid search response")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise UpstreamError("FHIR server returned an invalid search response")
    resources: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise UpstreamError("FHIR server returned an invalid search response")
        resource = entry.get("resource")
        search = entry.get("search") or {}
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        if (isinstance(search, dict) and search.get("mode") == "outcome") or (
            resource["resourceType"] == "OperationOutcome"
        ):
            continue  # warnings about the search itself, not patient data
        resources.append(resource)
    return resources


class _Collected:
    """Resources in arrival order, de-duplicated by ``(resourceType, id)``; id-less ones all kept."""

    def __init__(self) -> None:
        self.resources: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str]] = set()

    def has(self, resource_type: str, resource_id: str) -> bool:
        return (resource_type, resource_id) in self._seen

    def add(self, resource: dict[str, Any]) -> None:
        resource_id = resource.get("id")
        if isinstance(resource_id, str):
            key = (str(resource.get("resourceType")), resource_id)
            if key in self._seen:
                return
            self._seen.add(key)
        self.resources.append(resource)
