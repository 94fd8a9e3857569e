"""The reports: one module per analysis (roofline, stalls, comm, serving, temporal, summary)."""
