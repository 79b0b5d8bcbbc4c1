"""dapt.study.layout: the path of a run's files and the run read back from them agree, so the report
matches every log and benchmark to the run that wrote it."""

from __future__ import annotations

import pytest

from dapt.core.errors import UserError
from dapt.study import layout

RUN = {"task": "rt_polarity", "model": "minilm", "variant": "dapt_tapt", "method": "lora", "seed": 3}


def test_run_files_read_back_to_their_run():
    key = layout.run_key(RUN)
    assert key == "rt_polarity/minilm/dapt_tapt/lora/seed3" == layout.RUN.format(**RUN)
    for path in (f"results/finetune/{key}/log.csv", f"/abs/results/evaluate/{key}/metrics.json"):
        assert layout.run_of_file(path, "log") == {**RUN, "seed": "3"}
    assert layout.run_key({**RUN, "extra": 1}) == key  # a results row has more fields


def test_benchmark_paths_name_rule_and_wildcards():
    assert layout.benchmark_key(f"results/benchmarks/finetune/{layout.run_key(RUN)}.tsv") == (
        "finetune",
        ["rt_polarity", "minilm", "dapt_tapt", "lora", "seed3"],
    )
    assert layout.benchmark_key("results/benchmarks/report.tsv") == ("report", [])
    with pytest.raises(UserError, match="benchmark path is not"):
        layout.benchmark_key("results/elsewhere/finetune/x.tsv")


def test_paths_that_do_not_follow_the_layout_are_refused():
    with pytest.raises(UserError, match="lacks the seed"):
        layout.run_of_file("results/finetune/t/m/v/full/s1/log.csv", "fine-tuning log")
    with pytest.raises(UserError, match="does not encode its wildcards"):
        layout.run_of_file("m/v/seed1/log.csv", "fine-tuning log")
    assert layout.chain_of_file("results/pretrain/minilm/dapt-imdb/loss.csv", "log") == ("minilm", "dapt-imdb")


def test_report_file_list_has_no_duplicates_and_captions_name_their_category():
    assert len(set(layout.REPORT_FILES)) == len(layout.REPORT_FILES)
    assert layout.report_files("out") == [f"out/{n}" for n in layout.REPORT_FILES]
    assert all((f.caption is None) == (f.category is None) for f in layout.REPORT)
