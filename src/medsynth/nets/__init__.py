"""Architectures we own; anything MONAI has is imported from MONAI instead."""
