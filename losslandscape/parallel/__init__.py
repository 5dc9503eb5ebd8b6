"""MPI: ranks, messages, the GPU per rank, and which rank evaluates which points."""
