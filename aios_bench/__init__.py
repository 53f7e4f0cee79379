"""Benchmarks behind ``aios bench <name>``: each runs its contenders side by side in one run and reports ratios."""
