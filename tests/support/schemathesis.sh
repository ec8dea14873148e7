#!/usr/bin/env bash
# schemathesis, the OpenAPI fuzzer (from PyPI, in a venv under target/), against
# a real flex-server started here on a throwaway SQLite data directory. It
# generates requests from /v1/openapi.json and checks that the server never
# fails (5xx), answers only as the schema says (bodies and status codes), and
# rejects what the schema forbids.
#
#   bash tests/support/schemathesis.sh            # run by tests/run.sh
#   ST_MAX_EXAMPLES=200 bash tests/support/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=$PWD/target/schemathesis-venv
version=4.32.5
if [[ ! -x $venv/bin/st ]] || ! "$venv/bin/pip" show schemathesis 2>/dev/null | grep -qx "Version: $version"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$version"
fi

tmp=$(mktemp -d)
token="schemathesis-admin-token-$RANDOM$RANDOM"
FLEX_ADMIN_TOKEN=$token RUST_LOG=error target/debug/flex-server \
    --listen 127.0.0.1:0 --data-dir "$tmp/data" >"$tmp/out" 2>"$tmp/err" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$tmp"' EXIT
# The server prints its URL once it listens: wait for that line, not a time.
for _ in $(seq 200); do
    grep -q 'listening on' "$tmp/out" && break
    kill -0 $server 2>/dev/null || { cat "$tmp/err" >&2; exit 1; }
    sleep 0.05
done
url=$(sed -n 's/^flex-server listening on //p' "$tmp/out")

# Agent calls need a device token: enroll a device for them.
device_token=$(python3 - "$url" "$token" <<'PY'
import json, sys, urllib.request
url, admin = sys.argv[1], sys.argv[2]
def post(path, body, token=None):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    return json.load(urllib.request.urlopen(req))
key = post("/v1/admin/enrollment-tokens", {"uses": 1}, admin)["token"]
print(post("/v1/agent/enroll", {"enrollment_token": key, "hostname": "schemathesis"})["device_token"])
PY
)

checks=not_a_server_error,response_schema_conformance,negative_data_rejection,status_code_conformance
# From the temporary directory: schemathesis keeps a cache in the current one.
st() {
    (cd "$tmp" && "$venv/bin/st" run "$url/v1/openapi.json" --checks "$checks" \
        --max-examples "${ST_MAX_EXAMPLES:-50}" --seed 1 --no-color \
        --report-dir "$tmp/report" "$@")
}
failed=0
# Agent calls with the device's token (first: the admin run revokes devices),
# then admin and public calls with the admin token.
st --header "Authorization: Bearer $device_token" \
    --include-path-regex '^/v1/agent/(claims|heartbeat|products|refunds|users/)' "$@" || failed=1
st --header "Authorization: Bearer $token" \
    --exclude-path-regex '^/v1/agent/(claims|heartbeat|products|refunds|users/)' "$@" || failed=1
exit $failed
