"""Test helpers kept out of the public names: fault injection for kill-and-resume trials, fake CIFAR-10
folders.
"""
