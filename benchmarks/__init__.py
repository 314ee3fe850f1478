"""Speed and memory benchmarks: the notebook's way against ours, on the same generated data."""
