"""Stage 1: Clotho captions + audio folders -> <work_dir>/<split>_text.csv, <split>_audio.csv.

    python preprocessing/01_clotho_dataset.py --conf conf.yaml [--set data.dataset_dir=DIR]

Splits of data.sources in the 'pairs' format (own data: a CSV of file_name,caption rows) are read by
utils/data/pairs.py, with the same stable IDs and skip reports.

Clips that are missing, empty or unreadable go to <work_dir>/<split>_skipped.csv with the reason;
the run continues. Per-split statistics are printed and saved to <work_dir>/dataset_stats.json.
"""

from __future__ import annotations

import json

from utils.base import paths
from utils.base.tables import AUDIO_COLUMNS, SKIPPED_COLUMNS, TEXT_COLUMNS, write_rows
from utils.cli import make_parser, run
from utils.data.clotho import overall_vocabulary, split_stats
from utils.data.pairs import build_split


def main(args, conf) -> None:
    paths.work_dir(conf).mkdir(parents=True, exist_ok=True)
    results, stats = [], {}
    for split in conf.data.all_splits():
        tables = build_split(conf, split)
        write_rows(paths.text_table(conf, split), tables.text_rows, TEXT_COLUMNS)
        write_rows(paths.audio_table(conf, split), tables.audio_rows, AUDIO_COLUMNS)
        write_rows(paths.skipped_table(conf, split), tables.skipped, SKIPPED_COLUMNS)
        stats[split] = split_stats(tables)
        results.append(tables)
        if tables.skipped:
            print(f"[{split}] {len(tables.skipped)} clip(s) skipped, see {paths.skipped_table(conf, split)}")
    stats["all"] = {"vocabulary": overall_vocabulary(results)}
    paths.stats(conf).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")

    header = f"{'split':<14}{'clips':>7}{'captions':>10}{'words':>9}{'vocab':>7}{'skipped':>9}  duration (s)"
    print(header)
    for split in conf.data.all_splits():
        s = stats[split]
        dur = f"{s['duration_min_s']}-{s['duration_max_s']}" if s["clips"] else "-"
        print(f"{split:<14}{s['clips']:>7}{s['captions']:>10}{s['words']:>9}{s['vocabulary']:>7}{s['skipped']:>9}  {dur}")
    print(f"vocabulary over all splits: {stats['all']['vocabulary']} words")
    print(f"wrote tables to {paths.work_dir(conf)}")


parser = make_parser(__doc__.splitlines()[0])

if __name__ == "__main__":
    run(main, parser)
