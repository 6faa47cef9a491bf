"""Metrics of generated images: radially averaged power spectra (more to come)."""
