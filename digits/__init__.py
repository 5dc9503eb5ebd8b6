"""Small models for scikit-learn's bundled 8x8 digits: real data, no download, seconds on a CPU."""
