#!/bin/bash
# The real-NVML check run on a lent GPU machine (docs/gpu-exporter.md, "On a real GPU"): the
# collector in-process while the GPU idles (bench/nvml_real_run.py), then the exporter as a process,
# scraped over HTTP before, during and after about 10 s of bf16 matrix products from PyTorch.
# Results go to $OUT/idle and $OUT/load (8 files).
#
# That machine has Python 3.12 with PyTorch, aiohttp, pyyaml and prometheus-client, and no network:
# the project's other dependencies travel as wheels in .whl/ (ignored by git). Prepared here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic pydantic_core annotated-types typing-inspection typing_extensions nvidia-ml-py \
#     bcrypt babel aiohttp yarl multidict propcache frozenlist aiosignal aiohappyeyeballs attrs \
#     prometheus_client PyYAML idna
# (the versions of .venv) and run there as: bash bench/nvml_device_check.sh
# LOCAL=1 PY=.venv/bin/python OUT=/tmp/x bash bench/nvml_device_check.sh runs it here (fault path).
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if [ -z "${LOCAL:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
mkdir -p $OUT/idle $OUT/load
{ nvidia-smi; nvidia-smi -q -d POWER,UTILIZATION,MEMORY,CLOCK; $PY -c "import pynvml, sys; print(sys.version); print('nvidia-ml-py at', pynvml.__file__)"; } > $OUT/idle/log.txt 2>&1
timeout 60 $PY bench/nvml_real_run.py --scrapes 3 --interval 2 --out $OUT/idle >> $OUT/idle/log.txt 2>&1
echo "nvml_real_run rc=$?" >> $OUT/idle/log.txt
printf 'pools: {h200: {gpu_hourly_cost: 4.5}}\ngpu_exporter: {default_pool: h200}\n' > /tmp/cfg.yaml
$PY -c "import sys; from exporter.gpu.cli import main; sys.exit(main(['gpu-exporter','--config.file','/tmp/cfg.yaml','--web.listen-address','127.0.0.1:9842']))" > $OUT/load/exporter.log 2>&1 &
EXP=$!
scrape() { $PY -c "import urllib.request,time,sys; t=time.time(); b=urllib.request.urlopen('http://127.0.0.1:9842/metrics',timeout=20).read(); sys.stdout.write(b.decode()); sys.stderr.write(f'$1 at {t:.3f} took {time.time()-t:.3f}s\n')" > $OUT/load/$1.txt 2>> $OUT/load/notes.txt; }
sleep 5
scrape s0
sleep 3
scrape s1
$PY - >> $OUT/load/notes.txt 2>&1 <<'EOF'
import time
import torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn_like(a)
torch.cuda.synchronize()
t = time.time(); n = 0
while time.time() - t < 10:
    a @ b
    n += 1
    if n % 20 == 0:
        torch.cuda.synchronize()
torch.cuda.synchronize()
print("matmuls", n, "start", round(t, 3), "end", round(time.time(), 3))
EOF
scrape s2
sleep 8
scrape s3
kill -TERM $EXP; wait $EXP; echo "exporter rc=$?" >> $OUT/load/exporter.log
ls -la $OUT $OUT/idle $OUT/load
