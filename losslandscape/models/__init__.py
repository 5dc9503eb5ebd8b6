"""Models by name (the CIFAR-10 zoo, the digits models) or from the user's factory, and checkpoints."""
