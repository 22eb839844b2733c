"""One thin module per web framework: convert its request and response, nothing else."""
