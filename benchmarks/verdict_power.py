"""Fixed-seed verdicts (seed-blocked Dunnett) and --seeds auto: familywise error and power.

Simulated sweeps (no training) with the notebook grid's effects (issue 13's 5-seed run:
dropout 0.0/0.3, n_embed 128/32, n_head 1/8) and seed noise made of a part every config
shares per seed (data order and initialisation) and a part of each config's own:

- FWER: every effect 0; share of sweeps with any wrong verdict (better/worse), at 2, 3
  and 5 seeds, and for the --seeds auto design (up to --max-seeds).
- Power: per level, the share of sweeps that resolve it rightly (a verdict other than
  unresolved that is not wrong: better/worse with the effect's sign, or equivalent when
  the effect is inside ±D).

With ``--store DIR``: first, how much of a real store's seed variance the seeds share
(the blocked model's seed term against its residual), the check behind blocking.

    python benchmarks/verdict_power.py [--sweeps 1000] [--store results-short]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweeps.manytoone import many_to_one  # noqa: E402
from sweeps.sequential import Design, simulate, wrong_verdicts  # noqa: E402

EFFECTS = {"dropout=0.0": -0.0139, "dropout=0.3": +0.0407, "n_embed=128": -0.3534,
           "n_embed=32": +0.4318, "n_head=1": -0.0019, "n_head=8": +0.0005}  # fmt: skip


def resolved(verdicts: np.ndarray, effects: np.ndarray, min_effect: float) -> np.ndarray:
    """Which verdicts resolve their level rightly: not 'unresolved' and not wrong (a small
    effect may be called equivalent or, by its sign, better/worse)."""
    wrong = wrong_verdicts(verdicts, effects, min_effect)
    return (verdicts != "unresolved") & ~wrong


def dunnett_runs(
    effects: np.ndarray,
    seeds: int,
    sweeps: int,
    seed_sd: float,
    noise_sd: float,
    min_effect: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """(sweeps, levels) verdicts of fixed-seed sweeps judged by sweeps.manytoone."""
    out = np.empty((sweeps, len(effects)), dtype=object)
    for i in range(sweeps):
        offsets = rng.normal(0.0, seed_sd, seeds)
        base = dict(enumerate(offsets + rng.normal(0.0, noise_sd, seeds)))
        levels = {j: dict(enumerate(e + offsets + rng.normal(0.0, noise_sd, seeds)))
                  for j, e in enumerate(effects)}  # fmt: skip
        results = many_to_one(levels, base, 0.95, min_effect, p_values=False)
        out[i] = [results[j].verdict for j in range(len(effects))]
    return out.astype(str)


def seed_share(store: Path) -> None:
    """Per sweep and dataset of a real store: the seed term's share of the variance."""
    import pandas as pd
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    from analysis.aggregate import _by_experiment, _seed_values
    from analysis.load import load_store
    from sweeps.sequential import METRIC

    rows = []
    experiments = _by_experiment(_seed_values(load_store(store).trials, METRIC))
    for (sweep, dataset), configs in experiments.items():
        for (factor, level), values in configs.items():
            rows += [(f"{factor}={level}", int(s), float(v)) for s, v in values.items()]
        frame = pd.DataFrame(rows, columns=["config", "seed", "y"])
        table = sm.stats.anova_lm(ols("y ~ C(config) + C(seed)", frame).fit())
        seed_ms, resid_ms = table.loc["C(seed)", "mean_sq"], table.loc["Residual", "mean_sq"]
        configs_n = frame["config"].nunique()
        seed_var = max(0.0, (seed_ms - resid_ms) / configs_n)
        print(f"{store} {sweep}/{dataset}: {configs_n} configs x "
              f"{frame['seed'].nunique()} seeds; seed variance {seed_var:.3g}, residual "
              f"variance {resid_ms:.3g}: the seeds share {seed_var / (seed_var + resid_ms):.0%} "
              "of a config's seed noise")  # fmt: skip
        rows = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=1000)
    parser.add_argument("--seed-sd", type=float, default=0.01, help="shared per-seed sd")
    parser.add_argument("--noise-sd", type=float, default=0.004, help="per-config seed sd")
    parser.add_argument("--min-effect", type=float, default=0.02)
    parser.add_argument("--store", type=Path, default=None)
    args = parser.parse_args()
    if args.store is not None:
        seed_share(args.store)
    effects = np.array(list(EFFECTS.values()))
    null = np.zeros_like(effects)
    rng = np.random.default_rng(0)
    d = args.min_effect
    print(f"\n{args.sweeps} sweeps per row; seed noise: shared sd {args.seed_sd}, per-config "
          f"sd {args.noise_sd}; D = {d}; 95% familywise")  # fmt: skip
    header = ["design", "FWER (null)", *EFFECTS, "trials/sweep"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for seeds in (2, 3, 5):
        fwer = (
            wrong_verdicts(
                dunnett_runs(null, seeds, args.sweeps, args.seed_sd, args.noise_sd, d, rng), null, d
            )
            .any(axis=1)
            .mean()
        )
        verdicts = dunnett_runs(effects, seeds, args.sweeps, args.seed_sd, args.noise_sd, d, rng)
        power = resolved(verdicts, effects[None, :], d).mean(axis=0)
        cells = [f"Dunnett, {seeds} seeds", f"{fwer:.3f}", *(f"{p:.0%}" for p in power),
                 str(seeds * (len(effects) + 1))]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    design = Design(levels=len(effects), min_effect=d, max_seeds=10)
    # paired differences cancel the shared part: each config keeps its own noise
    null_run = simulate(design, null, args.noise_sd, args.sweeps, rng)
    run = simulate(design, effects, args.noise_sd, args.sweeps, rng)
    power = resolved(run.verdicts, effects[None, :], d).mean(axis=0)
    cells = ["--seeds auto (3, 5, 8, 10)", f"{null_run.familywise_wrong:.3f}",
             *(f"{p:.0%}" for p in power), f"{run.trials_per_sweep:.1f}"]  # fmt: skip
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
