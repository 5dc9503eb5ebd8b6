"""CIFAR-10 architectures whose state_dict layouts and outputs match the original loss-landscape code."""
