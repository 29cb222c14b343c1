# One image for every OncoTwin service; the compose file / k8s manifests pick the app per container.
# Pinned base image; non-root; no model downloads at build time (spaCy runs blank pipelines).
FROM python:3.11.10-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN groupadd --system oncotwin && useradd --system --gid oncotwin --home /app oncotwin
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY graph ./graph
COPY oncotwin ./oncotwin
RUN pip install --no-cache-dir . && mkdir -p /var/lib/oncotwin && chown oncotwin:oncotwin /var/lib/oncotwin
USER oncotwin
ENV ONCOTWIN_DATA_DIR=/var/lib/oncotwin APP_MODULE="services.clinical_history.app:create_app()"
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health').status != 200)"
CMD ["sh", "-c", "exec gunicorn --bind 0.0.0.0:8000 --worker-class gthread --threads 8 --workers 2 \"$APP_MODULE\""]
