"""`make eval`: the medical-necessity evaluation set (tests/data/necessity_eval), scored.

Prints accuracy overall, per cancer and per expected determination, the confusion matrix
(rows: expected, columns: given) and the cases the engine got wrong."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.necessity_eval import DETERMINATIONS, HARMFUL, score

SHORT = {
    "meets": "meets",
    "does-not-meet": "not-meet",
    "insufficient-documentation": "insuff",
    "not-on-any-pathway": "no-path",
}


def main() -> None:
    s = score()
    print(f"medical-necessity evaluation set: {s.total} cases")
    print(f"accuracy: {s.correct}/{s.total} = {s.accuracy:.1%}")
    print(f"harmful confusions (meets <-> does-not-meet): {s.harmful} = {s.harmful / max(s.total, 1):.1%}")
    print("\nby cancer:")
    for cancer, (ok, n) in s.by_cancer.items():
        print(f"  {cancer:10s} {ok:3d}/{n:<3d} {ok / n:.1%}")
    print("\nby expected determination:")
    for name in DETERMINATIONS:
        ok, n = s.by_expected.get(name, (0, 0))
        print(f"  {name:28s} {ok:3d}/{n:<3d} {ok / n if n else 0:.1%}")
    print("\nconfusion (rows expected, columns given):")
    print(" " * 12 + "".join(f"{SHORT[d]:>10s}" for d in DETERMINATIONS))
    for expected in DETERMINATIONS:
        row = "".join(f"{s.confusion.get((expected, got), 0):>10d}" for got in DETERMINATIONS)
        print(f"  {SHORT[expected]:10s}{row}")
    if s.misses:
        print("\nmisses:")
        for case_id, expected, got in s.misses:
            flag = "  HARMFUL" if (expected, got) in HARMFUL else ""
            print(f"  {case_id}: expected {expected}, got {got}{flag}")


if __name__ == "__main__":
    main()
