"""One run of the GPU exporter's real NVML backend on a machine with an NVIDIA GPU.

    python bench/nvml_real_run.py [--scrapes 4] [--interval 2] [--out DIR]

Scrapes the collector in-process a few times, `--interval` seconds apart, and writes
`nvml-run.md`: driver and GPU model, which series each GPU had (and which were absent, i.e.
NotSupported), the NVML errors counted, and the last exposition. Meant for docs/gpu-exporter.md
whenever a real GPU is at hand; it needs no Prometheus and no config file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from exporter import contract
from exporter.config import parse_config
from exporter.gpu.collector import GpuCollector
from exporter.gpu.fields import FIELDS
from exporter.gpu.nvml import NvmlBackend

PER_GPU = [
    contract.GPU_UTILIZATION_RATIO,
    contract.GPU_BUSY_SECONDS_TOTAL,
    contract.GPU_IDLE_SECONDS_TOTAL,
    contract.GPU_OBSERVED_SECONDS_TOTAL,
    contract.GPU_IDLE,
    *(f.name for f in FIELDS),  # every reading of the GPU field table
    contract.GPU_HOURLY_COST,
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scrapes", type=int, default=4)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    cfg = parse_config(
        "pools: {gpu: {gpu_hourly_cost: 1}}\ngpu_exporter: {default_pool: gpu}\n", "nvml-run.yaml"
    )
    collector = GpuCollector(NvmlBackend(), cfg.gpu_exporter, cfg.pools)
    registry = CollectorRegistry()
    registry.register(collector)
    text = b""
    for i in range(args.scrapes):
        if i:
            time.sleep(args.interval)
        started = time.perf_counter()
        text = generate_latest(registry)
        print(f"scrape {i + 1}: {(time.perf_counter() - started) * 1000:.1f} ms, {len(text)} bytes")
    collector.close()
    samples = [line for line in text.decode().splitlines() if line and not line.startswith("#")]
    infos = [line for line in samples if line.startswith(contract.GPU_INFO + "{")]
    report = ["# Real NVML run", "", f"{len(infos)} GPU(s):", "", *[f"    {line}" for line in infos], ""]
    for info in infos:
        uuid = info.split('uuid="', 1)[1].split('"', 1)[0]
        present = [
            m for m in PER_GPU if any(s.startswith(m + "{") and f'uuid="{uuid}"' in s for s in samples)
        ]
        absent = [m for m in PER_GPU if m not in present]
        report += [
            f"## {uuid}",
            "",
            f"- present: {', '.join(present)}",
            f"- absent (not supported): {', '.join(absent) or 'none'}",
            "",
        ]
    errors = [
        s for s in samples if s.startswith(contract.NVML_ERRORS_TOTAL) or s.startswith(contract.NVML_UP)
    ]
    report += [
        "## Health",
        "",
        *[f"    {s}" for s in errors],
        "",
        "## Last exposition",
        "",
        "```",
        text.decode().rstrip(),
        "```",
        "",
    ]
    out = Path(args.out) / "nvml-run.md"
    out.write_text("\n".join(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
