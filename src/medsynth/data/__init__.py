"""Readers and datasets: every source becomes float tensors in [-1, 1], channels first."""

from medsynth.data.datasets import ImageSet, SplitData, load_splits, MedsynthDataModule

__all__ = ["ImageSet", "SplitData", "load_splits", "MedsynthDataModule"]
