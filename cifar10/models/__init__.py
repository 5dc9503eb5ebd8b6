"""CIFAR-10 architectures whose state_dict layouts match the original loss-landscape code."""
