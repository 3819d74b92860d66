"""The objective × schedule table of the image DDPM ablation from the results `mnist_ablation.sh` keeps.

    python benchmarks/mnist_ablation_table.py [--results benchmarks/results/mnist_ablation]

Every variant's bound is read from its ledger (per-digit full bounds of the same held-out digits, drawn from the
same seeds), so besides each row's mean ± standard error over digits the effects are given as paired
differences: d_i = bpd_i(A) − bpd_i(B) over the digits both variants hold, mean ± std(d)/√n. Pairing removes the
digit-to-digit spread that the unpaired standard errors carry; it says nothing of the spread between training
seeds (one model a variant).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

VARIANTS = (("simple", "linear"), ("hybrid", "linear"), ("simple", "squaredcos_cap_v2"), ("hybrid", "squaredcos_cap_v2"))
LABELS = {"simple": "L_simple, σ² = β̃", "hybrid": "L_hybrid, learned Σ", "linear": "linear",
          "squaredcos_cap_v2": "cosine"}


def per_digit(ledger: Path) -> tuple[dict[str, dict[int, float]], dict]:
    """({part: {digit index: bits/dim}} of the ledger's finished batches (part: total, decoder), its header)."""
    if not ledger.is_file():
        raise SystemExit(f"no bound ledger at {ledger}: run `bash benchmarks/mnist_ablation.sh OBJECTIVE SCHEDULE` first")
    stored = json.loads(ledger.read_text())
    parts: dict[str, dict[int, float]] = {"total": {}, "decoder": {}}
    for key, batch in stored["batches"].items():
        start = int(key.split("-")[0])
        if start in parts["total"] or start + len(batch["total"]) - 1 in parts["total"]:
            raise SystemExit(f"{ledger}: batch {key} overlaps another (the noise of a digit depends on its batch); "
                             "extend the ledger in whole batches of 100 digits")
        for part, values in parts.items():
            values.update({start + i: v for i, v in enumerate(batch[part])})
    return parts, {"fingerprint": stored["fingerprint"], "seed": stored["seed"]}


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error std/√n (n − 1 in the variance)."""
    n = len(values)
    if n < 2:
        raise SystemExit(f"a standard error needs at least 2 digits, not {n}")
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean ± standard error of a − b over the digits both hold, and their count."""
    shared = sorted(a.keys() & b.keys())
    return (*mean_and_error([a[i] - b[i] for i in shared]), len(shared))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/mnist_ablation"))
    args = parser.parse_args()
    bounds, seeds, rows = {}, {}, []
    for objective, schedule in VARIANTS:
        variant = args.results / f"{objective}_{schedule}"
        parts, header = per_digit(Path(f"{variant}_bpd_ledger.json"))
        bounds[objective, schedule], seeds[objective, schedule] = parts, header["seed"]
        total, error = mean_and_error(list(parts["total"].values()))
        decoder = sum(parts["decoder"].values()) / len(parts["decoder"])
        fid_run = json.loads(Path(f"{variant}_fid.json").read_text())
        if fid_run.get("fingerprint") != header["fingerprint"]:
            raise SystemExit(f"{variant}_fid.json was measured on other weights than its bound ledger "
                             f"({fid_run.get('fingerprint')} vs {header['fingerprint']}): delete it and run the script")
        fid = fid_run["unconditional_classifier_fid"]
        rows.append(f"| {LABELS[objective]} | {LABELS[schedule]} | {total:.3f} ± {error:.3f} | {decoder:.3f} | "
                    f"{fid:.1f} | {len(parts['total'])} |")
    if len(set(seeds.values())) > 1:
        raise SystemExit(f"the ledgers drew their noise from different seeds ({seeds}): the pairing needs one seed")
    print("| objective | β schedule | bits/dim | of which L_0 | classifier-FID (1,000 samples) | digits |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\npaired differences (bits/dim, mean ± standard error over digits):")
    for schedule in ("linear", "squaredcos_cap_v2"):
        mean, error, n = paired(bounds["hybrid", schedule]["total"], bounds["simple", schedule]["total"])
        print(f"  hybrid − simple, {LABELS[schedule]}: {mean:+.3f} ± {error:.3f} ({n} digits)")
    for objective in ("simple", "hybrid"):
        mean, error, n = paired(bounds[objective, "squaredcos_cap_v2"]["total"], bounds[objective, "linear"]["total"])
        print(f"  cosine − linear, {LABELS[objective]}: {mean:+.3f} ± {error:.3f} ({n} digits)")


if __name__ == "__main__":
    main()
