"""One markdown table (task x length, "score ± se (n)") from several `vist2 eval ruler` run folders.

    PYTHONPATH=src python benchmarks/eval/ruler_table.py benchmarks/eval/ruler-smollm2-text-*

A finished folder is read from its results.json. A folder whose run was stopped before the end
(no results.json) is summarized from its predictions.jsonl with the eval's own `summarize`,
and its cells say "stopped" when fewer predictions than --samples were made. A (task, length)
RULER could not generate is read from the folder's ruler-samples cache and shown as "n/a". The
last line is RULER's mean per length over the complete cells (`vist2.eval.rows.aggregates`).
"""

import json
import sys
from pathlib import Path

from vist2.eval import rows as eval_rows
from vist2.eval import ruler
from vist2.eval.sample import Row


def rows_of(folder: Path) -> tuple[list[dict], bool]:
    """The folder's rows and whether the run finished."""
    if (folder / "results.json").is_file():
        return json.loads((folder / "results.json").read_text(encoding="utf-8"))["rows"], True
    records = [json.loads(line) for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]
    for path in sorted((folder / "ruler-samples").glob("*/samples.json")):
        stored = json.loads(path.read_text(encoding="utf-8"))
        if "error" in stored["found"]:
            settings = stored["settings"]
            records.append({"id": "error", "task": settings["task"], "length": settings["length"], "mode": "text",
                            "error": stored["found"]["error"]})
    return [row.as_dict() for row in eval_rows.summarize("ruler", records, None)], False


def main(folders: list[str]) -> None:
    cells, lengths, complete = {}, set(), []
    for name in folders:
        folder = Path(name)
        rows, finished = rows_of(folder)
        flags = json.loads((folder / "run.json").read_text(encoding="utf-8"))["flags"]
        samples = flags["samples"]
        for task in flags["tasks"].split(","):  # planned cells, shown even before their first sample
            for length in (int(n) for n in flags["lengths"].split(",")):
                lengths.add(length)
                cells.setdefault((task, length), f"stopped before its first sample (0 of {samples})")
        for row in rows:
            if row["mode"] != "text" or row["aggregate"]:
                continue
            lengths.add(row["length"])
            if row["error"]:
                cells[row["task"], row["length"]] = "n/a: " + row["error"].split(": ", 1)[-1]
            else:
                se = "" if row["stderr"] is None else f" ± {row['stderr']:.1f}"
                note = "" if finished or row["n"] >= samples else f" of {samples}, stopped"
                cells[row["task"], row["length"]] = f"{row['score']:.0f}{se} ({row['n']}{note})"
                if not note:
                    complete.append(Row("ruler", row["task"], row["length"], "text", None, row["score"], row["n"],
                                        stderr=row["stderr"]))
    lengths = sorted(lengths)
    tasks = [t for t in ruler.TASKS if any((t, n) in cells for n in lengths)]
    print("| task | " + " | ".join(str(n) for n in lengths) + " |")
    print("|---" * (len(lengths) + 1) + "|")
    for task in tasks:
        print(f"| {task} | " + " | ".join(cells.get((task, n), "not run") for n in lengths) + " |")
    means = {row.length: row for row in eval_rows.aggregates("ruler", complete) if row.length is not None}
    print("| **mean of the complete cells** | " + " | ".join(
        f"{means[n].score:.1f} ± {means[n].stderr:.1f} ({means[n].aggregate})" if n in means else "-"
        for n in lengths) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
