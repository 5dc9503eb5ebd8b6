"""What a point's values are: built-in, model-computed, causal-LM and custom objectives as batch sums."""
