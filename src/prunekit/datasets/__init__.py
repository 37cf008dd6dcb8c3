"""Datasets prunekit uses: calibration/evaluation text and real image data."""
