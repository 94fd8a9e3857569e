"""Findings: placeholder replaced below."""
