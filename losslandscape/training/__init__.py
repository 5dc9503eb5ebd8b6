"""Training helpers shared by losslandscape.train and train_curve: the learning-rate schedule,
classification loss and accuracy.
"""

from losslandscape.training.evaluation import evaluate
from losslandscape.training.schedule import decay_epochs, epoch_generator, learning_rate

__all__ = [
    # schedule
    'learning_rate', 'decay_epochs', 'epoch_generator',
    # evaluation
    'evaluate',
]
