#!/usr/bin/env bash
# Run here (with registry access): the packages the GPU machine lacks, for its Python 3.12,
# into .device/ at the repository root (ignored by git; carried with `carry: [".device"]`).
# The machine holds torch, timm, pandas, pyarrow, fsspec, scipy, matplotlib; not Ray, smp,
# nibabel or cc3d. A call may carry 64 MiB: Ray's wheel (79 MB) is repacked without its Java
# jars and RLlib as tar.xz (~32 MB). SimpleITK (.mha input only) and s3fs are left out.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .device && mkdir -p .device/whl .device/ray
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 -d "$1" "${@:2}"
}
download .device/whl segmentation-models-pytorch==0.6.0 nibabel==5.4.2 \
  connected-components-3d==4.1.1 jsonschema==4.26.0 referencing==0.37.0 \
  jsonschema-specifications==2025.9.1 rpds-py==2026.9.1 tensorboardX==2.6.5 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
download .device/ray ray==2.60.0
(cd .device/ray && python3 -m zipfile -e ray-*.whl site && rm ray-*.whl \
  && rm -rf site/ray/jars site/ray/rllib && tar -C site -cf - . | xz -T0 -6 > ../ray.tar.xz)
rm -rf .device/ray
du -sh .device
