"""Speed levers for the GRPO step (`perf.*` switches); docs/performance.md measures them."""
