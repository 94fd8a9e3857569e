"""Analyzers: vectorized interval kernels and the roofline, stall, comm and serving analyses."""
