#!/usr/bin/env bash
# Entrypoint of the embench Airflow image: `<image> scheduler` runs `airflow scheduler`;
# a command that is a program (embench, bash, python, a path) runs as is.
set -euo pipefail
if [ "$#" -eq 0 ]; then
    exec airflow version
fi
case "$1" in
    airflow|embench|bash|sh|python|python3|pip|/*) exec "$@" ;;
    *) exec airflow "$@" ;;
esac
