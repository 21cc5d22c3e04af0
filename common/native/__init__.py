"""Fused CPU kernels (C, compiled once per machine) for second-order MAML's hot spots."""
