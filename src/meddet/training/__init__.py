"""Training: losses, patch sampling and augmentation (and, later, the training loop)."""
