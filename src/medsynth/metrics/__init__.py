"""What synthetic images are worth: fidelity, diversity, reconstruction, privacy, utility."""
