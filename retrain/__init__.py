"""Adapt the served head to a site's labelled images (installed as ``fer_triton.retrain``)."""
