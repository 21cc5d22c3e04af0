#!/usr/bin/env bash
# Packs fedmeta's Python dependencies for a GPU machine that has python3.12 + CUDA torch but no
# package index (the workplace's lent device machines): downloads cp312 wheels of the versions in
# .venv, unpacks them, drops Ray's Java/RLlib/Tune/Serve/Data/dashboard-UI parts and debug
# symbols (to fit a 64 MiB transfer) and writes .gpu/site.tar.xz (ignored by git). On the GPU:
#
#   mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site
#   chmod +x /tmp/site/ray/core/src/ray/gcs/gcs_server /tmp/site/ray/core/src/ray/raylet/raylet
#   PYTHONPATH=/tmp/site:$PWD OUT_DIR=$OUT docs/scripts/gpu_check.sh
#
# (zipfile extraction drops the executable bits of Ray's two binaries, hence the chmod.)
set -euo pipefail
PKGS="alembic annotated-types cffi cryptography dm-tree dp-accounting fastapi flwr greenlet grpcio-health-checking
higher httptools nibabel pydicom importlib-resources iterators jsonschema jsonschema-specifications mako monai prompt-toolkit
pycparser pycryptodome pydantic pydantic-core python-dotenv ray referencing rpds-py sqlalchemy starlette tomli
tomli-w typing-inspection tzdata uvicorn watchfiles wcwidth websockets protobuf grpcio typer click packaging safetensors"
spec=""
for p in $PKGS; do spec="$spec $p==$(.venv/bin/python -m pip show "$p" | awk '/^Version:/{print $2}')"; done
work=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none --platform any --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 -d "$work/wheels" $spec
mkdir "$work/site"
for wheel in "$work"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$work/site"; done
(cd "$work/site/ray" && rm -rf jars rllib dashboard/client tune serve train data llm air workflow util/dask util/spark)
strip "$work"/site/ray/core/src/ray/raylet/raylet "$work"/site/ray/core/src/ray/gcs/gcs_server "$work"/site/ray/_raylet.so
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p .gpu
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >>.git/info/exclude
tar -C "$work/site" -cf - . | xz -T0 -6 >.gpu/site.tar.xz
rm -rf "$work"
ls -l .gpu/site.tar.xz
