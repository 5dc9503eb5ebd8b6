"""The original code's cifar10/ folder: ``python -m cifar10.main`` trains (see losslandscape.train)."""
