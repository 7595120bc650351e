#!/usr/bin/env bash
# Source on the GPU machine, from the repository root, with .device carried:
#   . benchmarks/device/install.sh && python3 -m benchmarks.gpu_check --results-dir "$OUT"
# Unpacks Ray and installs the carried wheels under /tmp/site; this checkout is on PYTHONPATH
# (Ray's workers inherit it).
mkdir -p /tmp/site
tar -xJf .device/ray.tar.xz -C /tmp/site || return 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .device/whl/*.whl || return 1
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import ray, segmentation_models_pytorch, nibabel, cc3d, torch; print('ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
