#!/bin/sh
# Run by the nginx image's entrypoint: pick the server blocks. TLS is on when a cert and key are mounted
# in /etc/nginx/certs; the root filesystem is read-only, so the choice is written to /tmp (tmpfs).
# (The ONCOTWIN_NGINX_* variables exist for tests/test_deployments.py.)
set -eu
src=${ONCOTWIN_NGINX_CONF:-/etc/nginx/oncotwin}
out=${ONCOTWIN_NGINX_OUT:-/tmp/oncotwin-servers}
certs=${ONCOTWIN_NGINX_CERTS:-/etc/nginx/certs}
mkdir -p "$out"
rm -f "$out"/*.conf
if [ -s "$certs/tls.crt" ] && [ -s "$certs/tls.key" ]; then
  cp "$src/https.conf" "$out/https.conf"
  sed "s/@HTTPS_PORT@/${HTTPS_PORT:-443}/" "$src/redirect.conf" > "$out/redirect.conf"
  echo "oncotwin: TLS on (https on 8443, http redirects)"
else
  cp "$src/http.conf" "$out/http.conf"
  echo "oncotwin: no certs in $certs, plain http on 8080"
fi
