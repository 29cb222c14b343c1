# One multi-stage build, one target per OncoTwin service (each its own image):
#   docker build --target history -t oncotwin/history:0.1.0 .
# Targets: history, navigation, necessity, cds-hooks, radiology, dashboard, evaluations (HTTP apps under
# gunicorn on port 8000), worker (Celery; the queue is picked by the command), oncotwin (every service
# behind one port, plus the CLI, e.g. `oncotwin graph load`). The LLM server is services/llm/Dockerfile.
#
# Base image pinned by version. Pin it by digest too when you release through a registry:
#   docker buildx imagetools inspect python:3.11.10-slim-bookworm   -> FROM python:3.11.10-slim-bookworm@sha256:...
# No model is downloaded at build or run time: spaCy runs blank pipelines; the radiology model and the LLM
# weights are mounted (see docker-compose.yml and k8s/).

FROM python:3.11.10-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached while only the code changes): the project's own metadata decides them.
COPY pyproject.toml README.md ./
RUN mkdir -p shared services graph oncotwin && touch shared/__init__.py \
    && pip install . && pip uninstall -y oncotwin
COPY shared ./shared
COPY services ./services
COPY graph ./graph
COPY oncotwin ./oncotwin
RUN pip install --no-deps .

FROM python:3.11.10-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    ONCOTWIN_DATA_DIR=/var/lib/oncotwin
# A numeric user, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 oncotwin \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/oncotwin --no-create-home oncotwin \
    && mkdir -p /var/lib/oncotwin && chown 10001:10001 /var/lib/oncotwin
COPY --from=build /opt/venv /opt/venv
WORKDIR /var/lib/oncotwin
USER 10001:10001
EXPOSE 8000
# No access log: URLs carry patient ids; the apps write their own access log without clinical content.
CMD ["sh", "-c", "exec gunicorn --bind 0.0.0.0:8000 --worker-class gthread --workers ${GUNICORN_WORKERS:-2} --threads ${GUNICORN_THREADS:-8} --worker-tmp-dir /tmp --graceful-timeout 30 \"$APP_MODULE\""]

# --- HTTP services: the same runtime, a different app factory each -----------------------------------
FROM runtime AS http
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]

FROM http AS history
ENV APP_MODULE="services.clinical_history.app:create_app()"

FROM http AS navigation
ENV APP_MODULE="services.care_navigation.app:create_app()"

FROM http AS necessity
ENV APP_MODULE="services.medical_necessity.app:create_app()"

FROM http AS cds-hooks
ENV APP_MODULE="services.cds_hooks.app:create_app()"

FROM http AS radiology
ENV APP_MODULE="services.radiology.app:create_app()"

FROM http AS dashboard
ENV APP_MODULE="services.dashboard.app:create_app()"

FROM http AS evaluations
ENV APP_MODULE="services.evaluations.app:create_app()"

# --- Celery worker: `-Q <queue>` comes from the compose service / Deployment ---------------------------
FROM runtime AS worker
ENV CELERY_QUEUE=necessity
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["sh", "-c", "exec celery -A shared.celery_app:celery_app inspect ping --timeout 5 -d \"$CELERY_QUEUE@$(hostname)\""]
CMD ["sh", "-c", "exec celery -A shared.celery_app:celery_app worker -Q \"$CELERY_QUEUE\" -n \"$CELERY_QUEUE@%h\" --concurrency ${CELERY_CONCURRENCY:-2} --loglevel INFO"]

# --- Last, so a plain `docker build .` gives the all-in-one image -----------------------------------------
FROM http AS oncotwin
ENV APP_MODULE="oncotwin.app:create_app()"
