"""Training helpers shared by losslandscape.train and train_curve: the learning-rate schedule,
classification loss and accuracy.
"""
