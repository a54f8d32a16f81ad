"""One GRPO step's phases timed plain vs with the `perf` switches: `python -m coz_train.bench`."""
