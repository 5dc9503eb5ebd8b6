"""What a point's values are: built-in, model-computed, causal-LM and custom objectives as batch sums."""

from losslandscape.objectives.objective import (
    CausalLMObjective,
    ClassificationObjective,
    CustomObjective,
    ModelLossObjective,
    Objective,
    evaluate,
    resolve,
)

__all__ = [
    # objective
    'Objective', 'ClassificationObjective', 'ModelLossObjective', 'CausalLMObjective',
    'CustomObjective', 'resolve', 'evaluate',
]
