"""Models by name (the CIFAR-10 zoo, the digits models) or from the user's factory, and checkpoints."""

from losslandscape.models.loading import build, load, load_state, read_state_dict

__all__ = [
    # loading
    'load', 'build', 'read_state_dict', 'load_state',
]
