"""CIFAR-10 models and helpers of the loss-landscape suite."""
