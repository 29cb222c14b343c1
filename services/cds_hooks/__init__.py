"""CDS Hooks 2.0 face of OncoTwin: care navigation on ``patient-view``, medical necessity on
``order-select`` / ``order-sign``, authenticated by the CDS Client's signed JWT.

Endpoints: ``GET /cds-services`` (discovery, open: no patient data), ``POST /cds-services/{id}``
for ``oncotwin-navigation``, ``oncotwin-necessity-select``, ``oncotwin-necessity-sign``, and
``POST /cds-services/{id}/feedback``.

Secure by default: until ``CDS_JWKS_FILE`` or ``CDS_JWKS_URL`` (or ``CDS_ALLOWED_JKU``),
``CDS_ALLOWED_ISSUERS`` and ``CDS_BASE_URL`` are set, every hook and feedback call is a 401 naming
those variables (no local test key is trusted). Setting a key source without the other two stops
start-up. Accepted algorithms: ``CDS_JWT_ALGORITHMS`` (default RS384,ES384, the spec's
recommendation; other asymmetric ones may be listed for clients that sign differently; ``none`` and
HMAC can never be). Replay store: memory, or Redis (shared by workers) when ``REDIS_URL`` is set.

Modules: ``app`` (HTTP; the only one that knows Flask), ``security`` (client JWTs, jti store),
``data`` (prefetch / fhirServer -> PatientRecord), ``cards`` (engine results -> cards),
``suggestions`` (on-pathway alternatives), ``crd`` (Da Vinci coverage-information), ``catalog``
(services and prefetch templates), ``models`` (request and feedback shapes).
"""
