"""Attention and grouped-matmul implementations: an XLA reference plus accelerator kernels."""
