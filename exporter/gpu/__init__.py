"""The NVML GPU exporter: utilisation, busy/idle time, energy and cost per GPU (``chargeback gpu-exporter``)."""
