# Sourced by the device scripts (device_check.sh, quality_gpu.sh) in the repository root:
# the packages the GPU machine lacks, installed from the wheels carried in .whl/ (once
# per machine), and this checkout on PYTHONPATH (no `pip install -e` there). A missing
# wheel is reported in one line before pip runs. OSGAN_DEVICE_MODULES: the modules to
# look for (default: those the GPU machine lacks).
modules=${OSGAN_DEVICE_MODULES:-grain ml_collections tensorboardX portpicker}
if ! python3 -c "import ${modules// /, }" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no .whl/*.whl and python3 lacks one of: $modules; carry .whl (pack first)" >&2
    return 1
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
