#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests and the claims bench, on a Unix
# socket in a temporary directory, owned by the `postgres` user (initdb refuses
# to run as root). Nothing is assumed to be running; nothing outside DIR is
# touched.
#
#   bash tests/support/pg-cluster.sh start DIR [--durable]   # prints the connection string
#   bash tests/support/pg-cluster.sh stop DIR
#
# Without --durable the cluster skips fsync (the tests kill servers, never the
# database); the bench passes --durable so PostgreSQL commits reach the disk as
# SQLite's do with synchronous=FULL.
set -euo pipefail
cmd=${1:?usage: pg-cluster.sh start|stop DIR [--durable]}
dir=${2:?usage: pg-cluster.sh start|stop DIR [--durable]}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [[ -z $bin ]]; then
    echo "pg-cluster.sh: PostgreSQL is not installed: apt-get install postgresql" >&2
    exit 1
fi
as_postgres() {
    if [[ $(id -un) == postgres ]]; then "$@"; else runuser -u postgres -- "$@"; fi
}
case $cmd in
start)
    mkdir -p "$dir"
    chown postgres: "$dir" 2>/dev/null || true
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log"
    opts="-c listen_addresses='' -k $dir -c max_connections=400 -c shared_buffers=64MB"
    if [[ ${3:-} != --durable ]]; then
        opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    fi
    as_postgres "$bin/pg_ctl" -D "$dir/data" -o "$opts" -l "$dir/server.log" -w start >/dev/null
    echo "host=$dir user=postgres dbname=postgres"
    ;;
stop)
    [[ -d $dir/data ]] && as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
    rm -rf "$dir"
    ;;
*)
    echo "pg-cluster.sh: unknown command '$cmd' (start or stop)" >&2
    exit 2
    ;;
esac
