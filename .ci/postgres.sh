#!/usr/bin/env bash
# Make sure a PostgreSQL server runs on loopback with a throw-away test database, and print
# its SQLAlchemy URL on stdout. Needs root (apt-get, pg_ctlcluster); prints nothing and
# exits 1 otherwise, and the PostgreSQL tests then skip (outside CI) or fail (in CI).
set -euo pipefail
[ "$(id -u)" = 0 ] || exit 1
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
read -r version cluster port status _ < <(pg_lsclusters --no-header | head -n 1)
if [ "$status" != "online" ]; then
  pg_ctlcluster "$version" "$cluster" start >&2
fi
psql_as_postgres() { su postgres -c "psql -p $port -qtA -c \"$1\""; }
if [ "$(psql_as_postgres "SELECT 1 FROM pg_roles WHERE rolname='icca_test'")" != 1 ]; then
  psql_as_postgres "CREATE ROLE icca_test LOGIN PASSWORD 'icca_test'" >&2
fi
if [ "$(psql_as_postgres "SELECT 1 FROM pg_database WHERE datname='icca_test'")" != 1 ]; then
  psql_as_postgres "CREATE DATABASE icca_test OWNER icca_test" >&2
fi
echo "postgresql+psycopg://icca_test:icca_test@127.0.0.1:${port}/icca_test"
