"""A tiny causal transformer language model whose loss landscape the suite can draw with nothing
downloaded: character-level text from scikit-learn's bundled dataset descriptions (data.py), a
two-block GPT-2 built from a config (model.py), a short trainer (train.py) and a custom objective
for ``--loss_name`` (objectives.py). See README.md in this folder and run_example.sh."""
