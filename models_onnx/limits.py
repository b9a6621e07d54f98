"""Alarm limits set from training scores alone: the rules the nested evaluation chooses among.

Each rule reads the EWMA-smoothed out-of-fold training score (no labels, no test rows) and
returns the value above which a smoothed score alarms. The scores are a few hundred
autocorrelated values, so every rule is written for small samples.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import stats

__all__ = ["LIMIT_RULES", "limit_for"]

F = NDArray[np.float64]

# "max": the largest smoothed training score (the rule before issue 19).
# "q99": an upper 95 % confidence bound of the 0.99 quantile (order statistic of the binomial),
#        extrapolated past the maximum when n is too small to hold that bound.
# "pot3" / "pot4": peaks over the 0.9 quantile fitted with an exponential tail (the GPD with
#        shape 0: closed form, stable on ~40 exceedances), read at exceedance 1e-3 / 1e-4.
LIMIT_RULES = ("max", "q99", "pot3", "pot4")
_POT_P = {"pot3": 1e-3, "pot4": 1e-4}
_TAIL = 0.9  # peaks-over-threshold starts at this quantile


def limit_for(smoothed: F, rule: str) -> float:
    """The alarm limit of ``rule`` for smoothed out-of-fold training scores."""
    s = np.sort(np.asarray(smoothed, dtype=np.float64))
    if len(s) == 0:
        raise ValueError("no training scores to set a limit on")
    n = len(s)
    if rule == "max":
        value = float(s[-1])
    elif rule == "q99":
        k = int(stats.binom.ppf(0.95, n, 0.99))  # order statistic bounding q0.99 at 95 %
        if k < n:
            value = float(s[k])
        else:  # too few rows: step past the maximum by the spacing of the top 1 %
            top = s[-max(2, math.ceil(0.01 * n)) :]
            value = float(s[-1] + (top[-1] - top[0]))
    elif rule in _POT_P:
        u = float(np.quantile(s, _TAIL))
        excess = s[s > u] - u
        if len(excess) < 2:
            value = float(s[-1])
        else:
            beta = float(excess.mean())
            value = u + beta * math.log(len(excess) / n / _POT_P[rule])
    else:
        raise ValueError(f"limit rule {rule!r} is not one of {', '.join(LIMIT_RULES)}")
    return max(value, 1e-9)
