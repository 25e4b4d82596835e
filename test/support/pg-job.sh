#!/bin/sh
# A batch job with its own PostgreSQL server, as jobs that keep their results
# in a local database are written: the postmaster and its background
# processes (checkpointer, WAL writer, autovacuum) on shared memory, its
# socket in /run/pg and on loopback TCP, and a client (psql) per statement.
# Each step commits one row (fsync on) and then checks the table against
# what the job holds in its own memory: after a restore both must have come
# back from the same moment, or a step prints FAIL.
#
# PG_BIN: the server's bin directory (the image's, as on the host).
set -u
PG_BIN=${PG_BIN:?}
export PGHOST=/run/pg PGUSER=postgres PGDATABASE=postgres TZ=UTC
as_pg() { su -m -s /bin/sh -c 'exec "$0" "$@"' postgres -- "$@"; }
q() { "$PG_BIN/psql" -X -q -t -A -v ON_ERROR_STOP=1 "$@"; }

mkdir -p /state /pg /run/pg
date +%s >>/state/starts
echo "pgjob start"
chown 70:70 /pg /run/pg
if [ ! -s /pg/data/PG_VERSION ]; then
  as_pg "$PG_BIN/initdb" -D /pg/data -A trust -U postgres -E UTF8 --locale=C --no-sync >/pg/initdb.log 2>&1 ||
    { echo "pgjob error: initdb failed"; cat /pg/initdb.log; exit 1; }
fi
as_pg "$PG_BIN/postgres" -D /pg/data -k /run/pg -c listen_addresses=127.0.0.1 -c shared_buffers=32MB \
  -c max_connections=8 -c jit=off -c fsync=on -c synchronous_commit=on >/pg/server.log 2>&1 &
tries=0
until "$PG_BIN/pg_isready" -q; do
  tries=$((tries + 1))
  [ "$tries" -lt 300 ] || { echo "pgjob error: the server did not start"; cat /pg/server.log; exit 1; }
  sleep 0.1
done
q -c "create table steps (n int primary key, total bigint not null)" || exit 1

n=0
total=0
while :; do
  n=$((n + 1))
  total=$((total + n))
  # Every other step over loopback TCP instead of the UNIX socket.
  host=/run/pg
  [ $((n % 2)) = 0 ] && host=127.0.0.1
  if ! q -h "$host" -c "insert into steps values ($n, $total)"; then
    echo "pgjob $n FAIL: the insert failed"
  else
    got=$(q -c "select count(*) || ' ' || sum(n) || ' ' || max(total) from steps")
    if [ "$got" = "$n $total $total" ]; then
      echo "pgjob $n ok total=$total"
    else
      echo "pgjob $n FAIL: the table holds '$got', the job '$n $total $total'"
    fi
  fi
  sleep 0.3
done
