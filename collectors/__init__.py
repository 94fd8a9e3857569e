"""Collectors: raw traces (Sohu, PyTorch profiler / Kineto, Chrome JSON) into the trace store."""
