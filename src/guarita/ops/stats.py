"""The statistical tests behind rollout decisions, as one-sided confidence bounds.

Every function returns :class:`Bounds`: an estimate and a lower and an upper bound, EACH
one-sided at confidence ``1 - alpha``. A caller asks "is the lower bound above the limit"
(the candidate is bad, with confidence) or "is the upper bound below it" (the candidate is
fine, with confidence); with anything in between it waits for more data. All of them are
deterministic (no resampling), so a decision is a function of its samples alone.

numpy and scipy are imported inside the functions (the ``semantic`` extra), so that
importing guarita stays light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import numpy as np

    Values: TypeAlias = Sequence[float] | np.ndarray


@dataclass(frozen=True, slots=True)
class Bounds:
    estimate: float
    lower: float
    upper: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "estimate": _round(self.estimate),
            "lower": _round(self.lower),
            "upper": _round(self.upper),
            "n": self.n,
        }


def _round(value: float) -> float | None:
    """JSON-ready: no NaN or infinity (they are not valid JSON), six significant digits."""
    if not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def _special() -> Any:
    """scipy.special's distribution functions (the scipy.stats objects wrap them at ten
    times the cost, which the simulations feel)."""
    try:
        from scipy import special
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            'rollout decisions need numpy and scipy: pip install "guarita[semantic]"'
        ) from exc
    return special


def binomial_rate(failures: int, n: int, alpha: float) -> Bounds:
    """Exact (Clopper-Pearson) bounds of a failure rate: never below nominal coverage, which
    matters at the 1% rates rollouts care about, where the normal approximation is poor."""
    if n == 0:
        return Bounds(math.nan, 0.0, 1.0, 0)
    inverse = _special().betaincinv  # the beta distribution's quantile function
    lower = 0.0 if failures == 0 else float(inverse(failures, n - failures + 1, alpha))
    upper = 1.0 if failures == n else float(inverse(failures + 1, n - failures, 1 - alpha))
    return Bounds(failures / n, lower, upper, n)


def _wilson(failures: int, n: int, z: float) -> tuple[float, float]:
    p = failures / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_difference(failures_a: int, n_a: int, failures_b: int, n_b: int, alpha: float) -> Bounds:
    """Bounds of rate(a) - rate(b) by Newcombe's hybrid score method (Wilson intervals
    combined): good coverage with few or no failures, where the Wald interval collapses."""
    if n_a == 0 or n_b == 0:
        return Bounds(math.nan, -1.0, 1.0, min(n_a, n_b))
    z = float(_special().ndtri(1 - alpha))
    p_a, p_b = failures_a / n_a, failures_b / n_b
    lo_a, hi_a = _wilson(failures_a, n_a, z)
    lo_b, hi_b = _wilson(failures_b, n_b, z)
    diff = p_a - p_b
    lower = diff - math.sqrt((p_a - lo_a) ** 2 + (hi_b - p_b) ** 2)
    upper = diff + math.sqrt((hi_a - p_a) ** 2 + (p_b - lo_b) ** 2)
    return Bounds(diff, max(-1.0, lower), min(1.0, upper), min(n_a, n_b))


def mean(values: Values, alpha: float) -> Bounds:
    """Student-t bounds of a mean (quality and consistency scores are bounded in 0..1, so
    with the few dozen values the tests require the t approximation is sound)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n < 2:
        return Bounds(float(x.mean()) if n else math.nan, -math.inf, math.inf, n)
    m = float(x.mean())
    se = float(x.std(ddof=1)) / math.sqrt(n)
    t = float(_special().stdtrit(n - 1, 1 - alpha))
    return Bounds(m, m - t * se, m + t * se, n)


def mean_difference(a: Values, b: Values, alpha: float) -> Bounds:
    """Welch bounds of mean(a) - mean(b): unequal variances and sizes allowed."""
    import numpy as np

    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = int(xa.size), int(xb.size)
    if na < 2 or nb < 2:
        return Bounds(math.nan, -math.inf, math.inf, min(na, nb))
    va, vb = float(xa.var(ddof=1)) / na, float(xb.var(ddof=1)) / nb
    diff = float(xa.mean() - xb.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return Bounds(diff, diff, diff, min(na, nb))
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)) if va and vb else na + nb - 2
    t = float(_special().stdtrit(df, 1 - alpha))
    return Bounds(diff, diff - t * se, diff + t * se, min(na, nb))


def quantile(values: Values, q: float, alpha: float) -> Bounds:
    """Distribution-free bounds of a quantile from order statistics: the number of values
    below the true quantile is Binomial(n, q), so the j-th smallest value is a lower bound
    with confidence P(Binomial(n, q) >= j). Latency has a long tail; no shape is assumed."""
    import numpy as np

    x = np.sort(np.asarray(values, dtype=float))
    n = int(x.size)
    if n == 0:
        return Bounds(math.nan, -math.inf, math.inf, 0)
    estimate = float(np.quantile(x, q))
    cdf = _special().bdtr(np.arange(n + 1), n, q)  # P(Binomial(n, q) <= k), k = 0..n
    # lower: the (j+1)-th smallest value, j the largest with P(Bin(n, q) <= j) <= alpha
    j_low = int(np.searchsorted(cdf, alpha, side="right")) - 1
    lower = float(x[j_low]) if j_low >= 0 else -math.inf
    # upper: the (k+1)-th smallest value, k the smallest with P(Bin(n, q) <= k) >= 1 - alpha
    k_high = int(np.searchsorted(cdf, 1 - alpha, side="left"))
    upper = float(x[k_high]) if k_high < n else math.inf
    return Bounds(estimate, lower, upper, n)


def ratio_of_means(a: Values, b: Values, alpha: float) -> Bounds:
    """Bounds of mean(a) / mean(b) by the delta method. Used to put the candidate's
    similarity on the scale of the stable version's self-similarity."""
    import numpy as np

    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = int(xa.size), int(xb.size)
    if na < 2 or nb < 2 or float(xb.mean()) <= 0:
        return Bounds(math.nan, -math.inf, math.inf, min(na, nb))
    ma, mb = float(xa.mean()), float(xb.mean())
    ratio = ma / mb
    rel_var = float(xa.var(ddof=1)) / (na * ma * ma) if ma else 0.0
    rel_var += float(xb.var(ddof=1)) / (nb * mb * mb)
    se = abs(ratio) * math.sqrt(rel_var)
    z = float(_special().ndtri(1 - alpha))
    return Bounds(ratio, ratio - z * se, ratio + z * se, min(na, nb))
