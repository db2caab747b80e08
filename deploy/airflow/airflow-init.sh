#!/usr/bin/env bash
# The compose stack's one-shot init (service airflow-init), run as root in the Airflow image:
# hand the mounted folders to AIRFLOW_UID, then as that user migrate Airflow's metadata
# database, write the simple auth manager's password file, create the benchmark-host pool and
# migrate the results database, and remove the benchmark containers that runs no longer alive
# left on the Docker host (a stack taken down mid-run). Idempotent: safe on every `up`.
set -euo pipefail
: "${AIRFLOW_UID:?}" "${AIRFLOW_ADMIN_USER:?}" "${AIRFLOW_ADMIN_PASSWORD:?}" "${DOCKER_GID:?}"
: "${EMBENCH_DATA_DIR:?}" "${EMBENCH_CACHE_DIR:?}"

for dir in "$EMBENCH_DATA_DIR" "$EMBENCH_CACHE_DIR" /opt/airflow/logs /opt/airflow/auth \
           /var/cache/embench/hf; do
    mkdir -p "$dir"
    chown "$AIRFLOW_UID:0" "$dir"
    chmod 0775 "$dir"
done

export HOME=/opt/airflow
exec setpriv --reuid="$AIRFLOW_UID" --regid=0 --groups="$DOCKER_GID" -- bash -euo pipefail -c '
echo "[init] airflow db migrate"
airflow db migrate
echo "[init] simple auth manager password for ${AIRFLOW_ADMIN_USER}"
python - <<PY
import json, os
path = "/opt/airflow/auth/simple_auth_manager_passwords.json"
with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
PY
echo "[init] the pools of the host slots (1 slot each: one benchmark per host; embench host-pools)"
embench host-pools > /tmp/embench-pools.json
airflow pools import /tmp/embench-pools.json
echo "[init] results database migrations"
python -c "from embench.store.db import make_engine, upgrade_to_head; upgrade_to_head(make_engine())"
echo "[init] containers of runs no longer alive (deployment ${EMBENCH_DEPLOYMENT:-?})"
embench containers sweep || echo "[init] WARNING: the container sweep failed (see above); continuing"
echo "[init] done"
'
