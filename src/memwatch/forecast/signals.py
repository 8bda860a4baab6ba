"""Per-row signals beyond the probe's verdict, and the log the monitor keeps of exposures.

- exposures (`Exposures`): copies trained on so far, first and last seen step, the
  learning rate at each copy. When a row was seen, relative to the learning-rate
  schedule, predicts whether the final model retains it (TREC, Bergsma et al., ICLR
  2026); rows not seen again are forgotten (Hubble, 2025).
- `loss_trace_spread`: the interquartile range of a row's NLL over the probes (LT-IQR,
  Pollock et al. 2024): rows whose loss moves a lot are the vulnerable ones.
- min-k % (Shi et al. 2024) and log p_z (Hayes et al. 2024) of the latest probe, when
  the history holds them.

`ExposureLog` is state (the monitor's `seen` hook fills it); the forecast only reads
`ExposureLog.exposures()`.
"""

from __future__ import annotations

import numpy as np
import torch

from memwatch.forecast.inputs import Exposures

__all__ = ["ExposureLog", "loss_trace_spread", "probe_measure"]

# History attribute names of the probe's extraction measures ([P, n] float arrays).
MEASURES = {"min_k": ("min_k_logprob", "min_k"), "log_pz": ("log_pz",)}


class ExposureLog:
    """The (row, step) pairs training has seen so far, for `Exposures` (``complete=False``).

    `record(rows, step)` adds one exposure per entry of `rows` (watchlist indices; a row
    listed twice counts twice) at `step`.
    """

    def __init__(self, num_rows: int) -> None:
        self.num_rows = int(num_rows)
        self.reset()

    def reset(self) -> None:
        """Forget every exposure."""
        self._rows: list[np.ndarray] = []
        self._steps: list[np.ndarray] = []

    def record(self, rows, step: int) -> None:
        """Note that training saw `rows` (watchlist indices) at `step`."""
        idx = np.asarray(rows, np.int64).ravel()
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_rows):
            raise ValueError(f"seen(rows, step): rows must be watchlist indices in "
                             f"[0, {self.num_rows}); got {idx.min()}..{idx.max()}")
        if int(step) < 0:
            raise ValueError(f"seen(rows, step): step must be >= 0; got {step}")
        self._rows.append(idx)
        self._steps.append(np.full(len(idx), int(step), np.int64))

    def __len__(self) -> int:
        return sum(len(r) for r in self._rows)

    def exposures(self) -> Exposures | None:
        """The exposures recorded so far (None when none was)."""
        if not self._rows:
            return None
        return Exposures(np.concatenate(self._rows), np.concatenate(self._steps),
                         self.num_rows, complete=False)

    def state_dict(self) -> dict:
        """Tensors only (loadable with ``torch.load(weights_only=True)``)."""
        exp = self.exposures()
        rows = np.zeros(0, np.int64) if exp is None else exp.rows
        steps = np.zeros(0, np.int64) if exp is None else exp.steps
        return {"num_rows": self.num_rows, "rows": torch.from_numpy(rows.copy()),
                "steps": torch.from_numpy(steps.copy())}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        self.num_rows = int(state["num_rows"])
        self.reset()
        rows = state["rows"].numpy().astype(np.int64)
        if len(rows):
            self._rows.append(rows)
            self._steps.append(state["steps"].numpy().astype(np.int64))


def loss_trace_spread(nll: np.ndarray) -> np.ndarray:
    """float64 [n]: the interquartile range of each row's NLL over the probes ([P, n], NaN
    where not measured; 0 with fewer than two measurements) — LT-IQR, Pollock et al. 2024."""
    nll = np.asarray(nll, np.float64)
    if nll.ndim != 2 or nll.shape[0] == 0:
        return np.zeros(nll.shape[-1] if nll.ndim else 0)
    ok = np.isfinite(nll)
    out = np.zeros(nll.shape[1])
    enough = ok.sum(0) >= 2
    if enough.any():
        q = np.nanpercentile(np.where(ok, nll, np.nan)[:, enough], [25, 75], axis=0)
        out[enough] = q[1] - q[0]
    return out


def probe_measure(history, name: str) -> np.ndarray | None:
    """float [P, n]: the probe's extraction measure `name` ("min_k", "log_pz") over the
    probes, when the history keeps it and the latest probe measured it (else None)."""
    for attr in MEASURES[name]:
        values = getattr(history, attr, None)
        if values is None or callable(values):
            continue
        values = np.asarray(values, np.float64)
        if values.ndim == 2 and len(values) and np.isfinite(values[-1]).all():
            return values
    return None


class RowSignals:
    """The per-row signals a run has, as features of every row at a probe, looking ahead.

    Built once per forecast from what the caller gave (`ForecastInputs`) and what the
    history holds; `used` names the signals present, `names` the feature columns that
    `features(i, step)` returns for probe index i looking ahead to `step`:

    - ``exposures``: log1p(copies trained on by probe i);
    - ``exposures_ahead``: log1p(copies trained on after probe i, up to `step`). Exact
      where the exposures are known (complete, or recorded up to `step`); beyond the
      record, ``duplicates - copies so far`` when duplicate counts are given, else the
      row's rate so far carried on (a row seen k times in the first t steps is seen
      about k (step - t) / t more times in a shuffled stream);
    - ``since_last``: the learning rate summed from the row's last copy up to `step`, over
      the rate summed over the whole run (steps when no rate is given; 1 for a row not
      seen by then): how much updating it must survive (TREC, Bergsma et al. 2026);
    - ``rate_ahead``: log1p(Σ learning rate / peak rate over the copies ahead): a copy
      seen at a high rate moves the row more (with a learning rate and exposures);
    - ``lt_iqr``: the interquartile range of the row's NLL over the probes up to i;
    - ``min_k``, ``log_pz``: the probe's measures at i, when the history holds them.
    """

    def __init__(self, history, total_steps: int, exposures: Exposures | None = None,
                 rates: np.ndarray | None = None, duplicates: np.ndarray | None = None) -> None:
        self.steps = np.asarray(history.steps, np.int64)
        self.total_steps = int(total_steps)
        self.exposures = exposures
        self.duplicates = duplicates
        self.nll = history.nll_signal().astype(np.float64)
        self.measures = {m: probe_measure(history, m) for m in MEASURES}
        self.known_until = int(self.steps[-1]) if len(self.steps) else 0
        if exposures is not None and not exposures.complete and len(exposures.steps):
            self.known_until = max(self.known_until, int(exposures.steps.max()))
        horizon = np.arange(self.total_steps + 2)
        self.rates = (np.ones(len(horizon)) if rates is None
                      else np.append(rates, rates[-1] if len(rates) else 1.0)[:len(horizon)])
        self.rate_given = rates is not None
        self.peak = float(self.rates.max()) or 1.0
        self.rate_sum = np.concatenate([[0.0], np.cumsum(self.rates)])  # Σ rates[0:s]
        used = []
        if exposures is not None:
            used += ["exposures", "first/last seen"]
            if self.rate_given:
                used.append("learning rate at exposure")
        if len(self.steps) >= 2 and np.isfinite(self.nll).all(0).any():
            used.append("lt_iqr")
        used += [m for m, v in self.measures.items() if v is not None]
        self.used = tuple(used)
        names = []
        if exposures is not None:
            names += ["exposures", "exposures_ahead", "since_last"]
            if self.rate_given:
                names.append("rate_ahead")
        if "lt_iqr" in used:
            names.append("lt_iqr")
        names += [m for m, v in self.measures.items() if v is not None]
        self.names = tuple(names)

    def _ahead(self, frm: int, to: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(copies in (frm, to], Σ rate / peak over them, last copy's step <= to (NaN: none))."""
        exp = self.exposures
        known = min(to, self.total_steps if exp.complete else self.known_until)
        sel = (exp.steps > frm) & (exp.steps <= known)
        rows, steps = exp.rows[sel], np.clip(exp.steps[sel], 0, self.total_steps)
        count = np.bincount(rows, minlength=exp.num_rows).astype(np.float64)
        dose = np.bincount(rows, weights=self.rates[steps] / self.peak,
                           minlength=exp.num_rows).astype(np.float64)
        last = exp.last_seen(known)
        if to > known:  # beyond the record: estimate the copies still to come
            so_far = exp.counts(known).astype(np.float64)
            if self.duplicates is not None:
                more = np.maximum(self.duplicates - so_far, 0.0)
            else:
                more = so_far * (to - known) / max(known, 1)
            count += more
            mean_rate = (self.rate_sum[to + 1] - self.rate_sum[known + 1]) / max(to - known, 1)
            dose += more * mean_rate / self.peak
            guess = to - (to - known) / (more + 1.0)
            last = np.where(more >= 1.0, guess, last)
        return count, dose, last

    def features(self, i: int, step: int) -> np.ndarray:
        """float64 [n, len(names)]: the features of every row at probe index i, looking
        ahead to `step`."""
        at = int(self.steps[i])
        cols = []
        if self.exposures is not None:
            count, dose, last = self._ahead(at, int(step))
            so_far = self.exposures.counts(min(at, self.known_until)).astype(np.float64)
            to = min(int(step), self.total_steps)
            total = self.rate_sum[self.total_steps + 1] or 1.0
            start = np.clip(np.nan_to_num(last, nan=-1.0), 0, to).astype(np.int64)
            since = np.where(np.isnan(last), 1.0,
                             (self.rate_sum[to + 1] - self.rate_sum[start + 1]) / total)
            cols += [np.log1p(so_far), np.log1p(count), since]
            if self.rate_given:
                cols.append(np.log1p(dose))
        if "lt_iqr" in self.names:
            cols.append(loss_trace_spread(self.nll[: i + 1]))
        for m in ("min_k", "log_pz"):
            if m in self.names:
                v = self.measures[m][i]
                cols.append(np.where(np.isfinite(v), v, np.nanmedian(v) if np.isfinite(v).any()
                                     else 0.0))
        n = self.nll.shape[1]
        return np.column_stack(cols) if cols else np.zeros((n, 0))

    def state(self, step: int) -> np.ndarray:
        """float64 [n, 3]: each row's exposure state at `step`: log1p(copies trained on),
        the learning rate summed since the last copy over the run's (1: none yet), and
        log1p(Σ learning rate / peak over the copies). Beyond the record (incomplete
        exposures), the copies still to come are estimated as in `features`."""
        exp = self.exposures
        step = min(int(step), self.total_steps)
        count, dose, last = self._ahead(-1, step)
        total = self.rate_sum[self.total_steps + 1] or 1.0
        start = np.clip(np.nan_to_num(last, nan=-1.0), 0, step).astype(np.int64)
        since = np.where(np.isnan(last), 1.0,
                         (self.rate_sum[step + 1] - self.rate_sum[start + 1]) / total)
        del exp
        return np.column_stack([np.log1p(count), since, np.log1p(dose)])
