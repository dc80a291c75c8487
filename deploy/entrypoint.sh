#!/usr/bin/env bash
# Container entry point (also runs outside a container: tests/deploy/test_container.py).
# Configuration comes only from the environment and mounted secrets:
#   ICCA_DATABASE_URL     the case database (sqlite:////data/icca.db, or PostgreSQL for several replicas),
#                         or ICCA_DATABASE_URL_FILE: a mounted secret holding it (its password stays out of the environment listing)
#   ICCA_SIGN_IN_CONFIG   Streamlit secrets with [auth] (OIDC) and [roles]; required unless ICCA_ADDRESS is loopback
#   ICCA_PSEUDONYM_SECRET or ICCA_PSEUDONYM_SECRET_FILE   the key that pseudonymises patient IDs (same on every replica)
#   ICCA_ADDRESS (0.0.0.0), PORT (8501), ICCA_APP_DIR (/app), PYTHON (python)
set -euo pipefail

app_dir="${ICCA_APP_DIR:-/app}"
python="${PYTHON:-python}"
address="${ICCA_ADDRESS:-0.0.0.0}"
port="${PORT:-8501}"
sign_in="${ICCA_SIGN_IN_CONFIG:-}"
cd "$app_dir"

fail() { echo "error: $*" >&2; exit 2; }
from_file() {  # NAME: set $NAME from the file named by $NAME_FILE, when that is set
  local file_var="${1}_FILE"
  [ -n "${!file_var:-}" ] || return 0
  [ -r "${!file_var}" ] || fail "$file_var (${!file_var}) cannot be read."
  export "$1"="$(tr -d '\r\n' < "${!file_var}")"
}
from_file ICCA_DATABASE_URL
from_file ICCA_PSEUDONYM_SECRET

[ -n "${ICCA_DATABASE_URL:-}" ] || fail "set ICCA_DATABASE_URL (sqlite:////data/icca.db, or postgresql+psycopg://… for several replicas)."
[ -n "${ICCA_PSEUDONYM_SECRET:-}" ] || fail "set ICCA_PSEUDONYM_SECRET_FILE (a mounted secret): every replica must pseudonymise patient IDs with the same key."

secrets_args=()
if [ -n "$sign_in" ] && [ -f "$sign_in" ]; then
  secrets_args=(--secrets.files "$sign_in")
elif [ "$address" != 127.0.0.1 ] && [ "$address" != localhost ] && [ "$address" != ::1 ]; then
  fail "the dashboard would be reachable from the network without sign-in: mount Streamlit secrets with [auth] and [roles] at ${sign_in:-ICCA_SIGN_IN_CONFIG} (README, Shared deployment)."
fi

# Upgrade the schema once before serving; on PostgreSQL an advisory lock lets replicas start together.
"$python" -c "from core import db; db.migrate(db.make_engine())"

exec "$python" -m streamlit run app.py \
  --server.address "$address" \
  --server.port "$port" \
  --server.headless true \
  --server.enableXsrfProtection true \
  --server.enableCORS false \
  --browser.gatherUsageStats false \
  --client.showErrorDetails none \
  "${secrets_args[@]}"
