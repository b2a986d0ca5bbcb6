# Sourced by the device scripts (device_check.sh, quality_gpu.sh) in the repository root:
# the packages the GPU machine lacks, installed from the wheels carried in .whl/ (once
# per machine), and this checkout on PYTHONPATH (no `pip install -e` there).
if ! python3 -c "import grain, ml_collections, tensorboardX, portpicker" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
