"""The study's statistics (see results.py); the public entry points are re-exported here."""
