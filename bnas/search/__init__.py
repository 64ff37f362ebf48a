"""Differentiable architecture search of binary cells (BNAS, Kim et al., ECCV 2020)."""
