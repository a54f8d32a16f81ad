"""The study's statistics: `analyze` the ratings (see results.py and the modules it names)."""

from coz_train.study.analysis.results import Results, TestResult, analyze
from coz_train.study.analysis.screening import ScreeningRules

__all__ = ["Results", "ScreeningRules", "TestResult", "analyze"]
