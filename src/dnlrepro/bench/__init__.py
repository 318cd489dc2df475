"""Inference speed and training memory as mmseg measures them (evaluate@)."""
