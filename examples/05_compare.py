"""Step 5 (paper section III, Fig. 9): compare Model A and Model B smear by smear
(Wilcoxon rank-sum as in the paper, and the paired signed-rank test).

    python examples/05_compare.py --work WORK
"""
import argparse
from pathlib import Path

from wbc_nnabla import report, scoring

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--work", default="work")
args = ap.parse_args()
work = Path(args.work)

result = scoring.compare(scoring.score(work / "predictions_A.csv"), scoring.score(work / "predictions_B.csv"))
report.write_compare(result, work / "compare", overwrite=True)
s = result.summary
print(f"rank-sum p: 5 classes {s['p_ranksum5']:.3g}, 6 classes {s['p_ranksum6']:.3g}")
print(f"signed-rank p: 5 classes {s['p_signedrank5']:.3g}, 6 classes {s['p_signedrank6']:.3g}")
print(result.recall_change.to_string(index=False))
print("report:", work / "compare" / "report.html")
