#!/usr/bin/env bash
# Makes sure the local PostgreSQL and Redis that berth's dev mode and tests use are up:
# starts them if they are installed but stopped, installs them with apt when they are
# missing and we may (root or passwordless sudo; set BERTH_NO_INSTALL=1 to forbid), and
# otherwise says exactly what to run. Idempotent; prints one line per service.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_PORT=6379

say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1; fi
}

can_install() {
  [ -z "${BERTH_NO_INSTALL:-}" ] && command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; }
}

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_up() {
  if command -v pg_isready >/dev/null 2>&1; then pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
  else (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null; fi
}

pg_start() {
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    for v in $(ls /etc/postgresql); do
      as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null || true
    done
  elif command -v service >/dev/null 2>&1; then
    as_root service postgresql start >/dev/null 2>&1 || true
  fi
}

# After we install PostgreSQL ourselves, let local TCP connections in without a password,
# as berth's default database.url expects. We never touch a server we did not install.
pg_trust_local() {
  for hba in /etc/postgresql/*/main/pg_hba.conf; do
    [ -f "$hba" ] || continue
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  done
  for v in $(ls /etc/postgresql); do as_root pg_ctlcluster --skip-systemctl-redirect "$v" main reload 2>/dev/null || true; done
}

ensure_postgres() {
  if pg_up; then say "PostgreSQL is up on $PG_HOST:$PG_PORT"; return; fi
  if command -v pg_ctlcluster >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1 || [ -d /etc/postgresql ]; then
    say "PostgreSQL is installed but stopped; starting it"
    pg_start
  elif can_install; then
    say "PostgreSQL is missing; installing it with apt"
    apt_install postgresql postgresql-client
    pg_start
    pg_trust_local
  else
    die "PostgreSQL is not installed. Run: sudo apt-get install -y postgresql && sudo pg_ctlcluster \$(ls /etc/postgresql) main start
  (and allow trust auth for 127.0.0.1 in pg_hba.conf, or set BERTH_DATABASE__URL to a URL with a password)"
  fi
  for _ in $(seq 1 30); do pg_up && { say "PostgreSQL is up on $PG_HOST:$PG_PORT"; return; }; sleep 1; done
  die "PostgreSQL did not come up on $PG_HOST:$PG_PORT. Try: sudo pg_ctlcluster \$(ls /etc/postgresql) main start"
}

redis_up() {
  if command -v redis-cli >/dev/null 2>&1; then [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
  else (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; fi
}

redis_start() {
  mkdir -p /tmp/berth-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /tmp/berth-redis --logfile /tmp/berth-redis/redis.log
}

ensure_redis() {
  if redis_up; then say "Redis is up on 127.0.0.1:$REDIS_PORT"; return; fi
  if command -v redis-server >/dev/null 2>&1; then
    say "Redis is installed but stopped; starting it"
  elif can_install; then
    say "Redis is missing; installing it with apt"
    apt_install redis-server
    # The package may start its own service; ours only if it did not.
    sleep 1
    redis_up && { say "Redis is up on 127.0.0.1:$REDIS_PORT"; return; }
  else
    die "Redis is not installed. Run: sudo apt-get install -y redis-server && redis-server --daemonize yes --port $REDIS_PORT"
  fi
  redis_start
  for _ in $(seq 1 20); do redis_up && { say "Redis is up on 127.0.0.1:$REDIS_PORT"; return; }; sleep 0.5; done
  die "Redis did not come up on 127.0.0.1:$REDIS_PORT. Try: redis-server --daemonize yes --port $REDIS_PORT"
}

ensure_postgres
ensure_redis
