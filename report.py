"""report: what a finding leaves behind: its figure, its numbers and verdict (JSON), and REPORT.md."""
import json
import os

import plots
import verdicts


def save_outcome(outcome, figures_dir, meta):
    """Write figures_dir/<name>.png/.pdf and <name>.json; return the verdict lines to print."""
    os.makedirs(figures_dir, exist_ok=True)
    base = os.path.join(figures_dir, outcome.name)
    plots.save(getattr(plots, outcome.name)(outcome.numbers, outcome.title), base)
    record = {"finding": outcome.name, "title": outcome.title, **meta, "notes": outcome.notes,
              "verdict": [c.as_dict() for c in outcome.claims], "numbers": outcome.numbers}
    with open(base + ".json", "w", encoding="utf-8") as file:
        json.dump(record, file, indent=1, default=float)
    return [outcome.title, *verdicts.table(outcome.claims), *(f"  note: {n}" for n in outcome.notes),
            f"  figure: {base}.png, numbers: {base}.json"]


def write_report(outcomes, figures_dir, meta):
    """figures_dir/REPORT.md: every finding's figure and verdict table."""
    lines = ["# lazyfeat report", "",
             f"Scale `{meta['scale']}`, device `{meta['device']}`. Produced by `python run.py all` in "
             f"{meta['wall_s']:.0f} s, which computed {meta['computed']} training runs and read "
             f"{meta['reused']} already stored ones.", ""]
    for outcome in outcomes:
        lines += [f"## {outcome.title}", "", f"![{outcome.name}]({outcome.name}.png)", "",
                  *verdicts.markdown_table(outcome.claims), ""]
        lines += [f"- {note}" for note in outcome.notes] + [""]
    path = os.path.join(figures_dir, "REPORT.md")
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines))
    return path
