"""The committed reported-number CSVs match the spec tables they were transcribed from.

The spec Markdown is parsed here independently of ``analysis.transcribe_reported`` (a plain
cell lookup by row and column label), so a transcription bug cannot hide behind itself.
"""

from __future__ import annotations

import csv
import io
import math
import re

import pytest

from analysis.reported import COLUMNS, REPORTED_DIR, UNITS, load_reported
from analysis.transcribe_reported import BASELINES_SPEC, SPARSE_SPEC, transcribe
from dllm_accel.paths import shared_dir

SPECS = shared_dir() / "specs"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def spec_text(name: str) -> str:
    path = SPECS / name
    if not path.is_file():
        pytest.fail(f"spec {path} not found (set DLLM_ACCEL_SHARED)")
    return path.read_text(encoding="utf-8")


def spec_table(name: str, heading: str, index: int = 0, label_columns: int = 1) -> dict[tuple[str, str], str]:
    """{(row label, column label): cell} of the ``index``-th table below ``heading``.

    The row label joins the first ``label_columns`` cells; an empty first cell repeats the
    row above's (Fast-dLLM prints the task once per pair of lengths).
    """
    block = spec_text(name).split(heading, 1)[1]
    tables = re.findall(r"((?:^\|.*\n)+)", block, flags=re.M)
    lines = [line for line in tables[index].splitlines() if not re.fullmatch(r"[|\-: ]+", line)]
    header, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    cells, previous = {}, ""
    for cells_of_row in rows:
        previous = cells_of_row[0] or previous
        label = " ".join([previous, *cells_of_row[1:label_columns]]).replace("*", "")
        for j in range(label_columns, len(header)):
            cells[(label, header[j])] = cells_of_row[j]
    return cells


@pytest.fixture(scope="module")
def reported():
    return load_reported()


def values(frame, **where) -> list[float]:
    selected = frame
    for key, value in where.items():
        selected = selected[selected[key] == value]
    return selected["value"].tolist()


def test_every_csv_is_tidy(reported):
    for path in sorted(REPORTED_DIR.glob("*.csv")):
        assert next(csv.reader(io.StringIO(path.read_text()))) == COLUMNS, path
    assert set(reported["metric"]) <= set(UNITS)
    assert (reported["unit"] == reported["metric"].map(UNITS)).all()
    key = ["paper", "table", "model", "method", "task", "setting", "metric"]
    duplicated = reported[reported.duplicated(key, keep=False)]
    assert duplicated.empty, duplicated[key].head()
    missing = reported[reported["value"].isna()]
    assert (missing["note"].str.contains("OOM")).all(), "only OOM cells may be empty"
    throughput = reported["metric"].isin(["throughput", "speedup"])
    assert (reported.loc[throughput, "throughput_definition"] != "").all()


@pytest.mark.parametrize(
    "table,model,heading",
    [
        ("1a", "llada_8b_instruct", "### Table 1a"),
        ("1b", "llada_1_5", "### Table 1b"),
        ("2a", "dream_7b_base", "### Table 2a"),
        ("2b", "dream_7b_instruct", "### Table 2b"),
    ],
)
def test_sparse_dllm_tables_cell_by_cell(reported, table, model, heading):
    methods = {"vanilla": "vanilla", "dLLM-Cache": "dllm_cache", "dKV-Cache": "dkv_cache", "Fast-dLLM": "fast_dllm",
               "Sparse-dLLM": "sparse_dllm"}
    tasks = {"MMLU": "mmlu", "ARC-C": "arc_c", "PIQA": "piqa", "GPQA": "gpqa", "GSM8K": "gsm8k", "MATH": "math",
             "HumanEval": "humaneval", "Avg": "avg"}
    kinds = {"acc": ("accuracy", None), "TPS": ("throughput", "speedup"), "mem": ("peak_memory", "memory_ratio")}
    cells = spec_table(SPARSE_SPEC, heading)
    assert len(cells) == 15 * 8
    for (label, column), cell in cells.items():
        method_label, kind = label.rsplit(" ", 1)
        metric, ratio_metric = kinds[kind]
        where = dict(paper="sparse_dllm", table=table, model=model, method=methods[method_label], task=tasks[column])
        numbers = [float(n) for n in NUMBER.findall(cell)]
        if cell.endswith("×") and "(" not in cell:  # the Avg speed/memory column prints only a ratio
            assert values(reported, metric=ratio_metric, **where) == numbers, (label, column)
            continue
        assert values(reported, metric=metric, **where) == numbers[:1], (label, column)
        if len(numbers) == 2:
            assert values(reported, metric=ratio_metric, **where) == numbers[1:], (label, column)


def test_sparse_dllm_named_cells(reported):
    gsm8k = dict(paper="sparse_dllm", table="1a", model="llada_8b_instruct", method="sparse_dllm", task="gsm8k")
    assert values(reported, metric="throughput", **gsm8k) == [26.45]
    assert values(reported, metric="speedup", **gsm8k) == [5.8]
    assert spec_table(SPARSE_SPEC, "### Table 1a")[("Sparse-dLLM TPS", "GSM8K")] == "26.45 (5.8×)"
    fig5 = spec_table(SPARSE_SPEC, "### Fig. 5")
    assert fig5[("LLaDA TPS Sparse-dLLM", "8k")] == "9.0"
    point = dict(paper="sparse_dllm", table="fig5", model="llada_8b_instruct", method="sparse_dllm")
    assert values(reported, metric="throughput", setting="seq_len=8192", **point) == [9.0]
    assert fig5[("Dream mem Fast-dLLM", "6k")] == "–"
    oom = values(reported, table="fig5", model="dream_7b_instruct", method="fast_dllm", metric="peak_memory",
                 setting="seq_len=6144")
    assert len(oom) == 1 and math.isnan(oom[0])


def test_dyllm_table_and_curves(reported):
    dream = spec_table(SPARSE_SPEC, "## B.10 Reported numbers", index=1)
    assert dream[("GSM8K", "DyLLM τ=0.995")] == "78.09 / 120.62 (9.60×)"
    where = dict(paper="dyllm", table="result_table", model="dream_7b_instruct", method="dyllm", task="gsm8k",
                 setting="threshold=0.995")
    assert [values(reported, metric=m, **where) for m in ("accuracy", "throughput", "speedup")] == [
        [78.09], [120.62], [9.6]]
    llada = spec_table(SPARSE_SPEC, "## B.10 Reported numbers", index=0)
    for (task, column), cell in llada.items():
        method = {"Original": "vanilla", "Fast-Prefix": "fast_dllm_prefix", "Fast-Dual": "fast_dllm_dual",
                  "dLLM-Cache": "dllm_cache"}.get(column, "dyllm")
        setting = f"threshold={column.split('=')[1]}" if method == "dyllm" else ""
        accuracy = values(reported, table="result_table", model="llada_8b_instruct", method=method,
                          task=task.lower().replace("-", "_"), setting=setting, metric="accuracy")
        assert accuracy == [float(NUMBER.findall(cell)[0])], (task, column)
    curves = spec_table(SPARSE_SPEC, "### Accuracy against throughput with more tokens per step")
    assert curves[("Dream-MBPP", "dyllm")].endswith("(400, 24.3)")
    point = dict(table="curves", model="dream_7b_instruct", method="dyllm", task="mbpp",
                 setting="threshold=0.995;tokens_per_step=4")
    assert values(reported, metric="throughput", **point) == [400.0]
    assert values(reported, metric="accuracy", **point) == [24.3]


def test_fast_dllm_tables(reported):
    table1 = spec_table(BASELINES_SPEC, "**Table 1: LLaDA-8B-Instruct**", label_columns=2)
    assert table1[("GSM8K 5-shot 512", "+Cache+Parallel")] == "77.2 / 35.3 (11.0×)"
    where = dict(paper="fast_dllm", table="1", model="llada_8b_instruct", method="fast_dllm_prefix_parallel",
                 task="gsm8k", setting="gen_length=512")
    assert [values(reported, metric=m, **where) for m in ("accuracy", "throughput", "speedup")] == [
        [77.2], [35.3], [11.0]]
    table2 = spec_table(BASELINES_SPEC, "**Table 2: Dream-v0-Base-7B:**", label_columns=2)
    assert table2[("MBPP 3-shot 256", "+Cache+Parallel")] == "56.4 / 76.0 (6.8×)"
    where = dict(table="2", model="dream_7b_base", method="fast_dllm_prefix_parallel", task="mbpp",
                 setting="gen_length=256")
    assert values(reported, metric="throughput", **where) == [76.0]
    table34 = spec_table(BASELINES_SPEC, "**Tables 3 and 4: LLaDA GSM8K**")
    assert table34[("8-shot, len 1024", "+DualCache")] == "76.0 / 19.3 (27.6×)"
    where = dict(table="3-4", method="fast_dllm_dual_parallel", setting="gen_length=1024;shots=8")
    assert [values(reported, metric=m, **where) for m in ("accuracy", "throughput", "speedup")] == [
        [76.0], [19.3], [27.6]]
    assert values(reported, paper="fast_dllm", table="fig5", setting="threshold=0.9") == [3.25]


def test_dllm_cache_speedups(reported):
    radar = spec_table(BASELINES_SPEC, "### 5.9 Reported numbers (dLLM-Cache)")
    assert "MMLU 6.1" in radar[("Dream Instruct", "Speedups (×)")]
    assert values(reported, paper="dllm_cache", model="dream_7b_instruct", task="mmlu") == [6.1]
    assert len(values(reported, paper="dllm_cache")) == 24


def test_committed_csvs_equal_a_fresh_transcription():
    """Nothing in results/reported is hand-edited: rerunning the transcription reproduces it."""
    for name, rows in transcribe(SPECS).items():
        with open(REPORTED_DIR / name, newline="", encoding="utf-8") as handle:
            committed = list(csv.DictReader(handle))
        assert committed == [{k: str(v) for k, v in r.items()} for r in rows], name


@pytest.mark.parametrize("table,model,heading", [("1", "llada_8b_instruct", "**Table 1: LLaDA-8B-Instruct**"),
                                                 ("2", "dream_7b_base", "**Table 2: Dream-v0-Base-7B:**")])
def test_fast_dllm_tables_cell_by_cell(reported, table, model, heading):
    methods = {"LLaDA": "vanilla", "Dream": "vanilla", "+Cache": "fast_dllm_prefix", "+Parallel": "fast_dllm_parallel",
               "+Cache+Parallel": "fast_dllm_prefix_parallel"}
    cells = spec_table(BASELINES_SPEC, heading, label_columns=2)
    assert len(cells) == 8 * 4
    for (label, column), cell in cells.items():
        task, length = label.split(" ")[0].lower(), label.rsplit(" ", 1)[1]
        where = dict(paper="fast_dllm", table=table, model=model, method=methods[column], task=task,
                     setting=f"gen_length={length}")
        numbers = [float(n) for n in NUMBER.findall(cell)]
        got = [values(reported, metric=m, **where) for m in ("accuracy", "throughput", "speedup")]
        assert [v for vs in got for v in vs] == numbers, (label, column)


def test_every_paper_table_finds_its_printed_numbers(reported):
    """Each catalog entry selects rows of its paper (table labels are text, even when a file's are all digits)."""
    from analysis.catalog import PAPER_TABLES

    for table in PAPER_TABLES:
        rows = reported[(reported["paper"] == table.paper) & reported["table"].isin(table.tables)]
        assert not rows.empty, table.experiment


# d2Cache Tables 1 and 4 print an AVG row (score over the four tasks) per model and method
D2_AVERAGES = {
    ("1", "llada_8b_instruct"): {"vanilla": 43.9, "dllm_cache": 43.1, "fast_dllm_prefix": 43.2, "d2_cache": 44.4},
    ("1", "dream_7b_instruct"): {"vanilla": 57.6, "dllm_cache": 56.9, "fast_dllm_prefix": 57.4, "d2_cache": 60.6},
    ("4", "llada_8b_base"): {"vanilla": 43.5, "dllm_cache": 42.3, "fast_dllm_prefix": 41.9, "d2_cache": 43.5},
    ("4", "dream_7b_base"): {"vanilla": 53.3, "dllm_cache": 50.4, "fast_dllm_prefix": 48.1, "d2_cache": 56.9},
}


def test_d2_cache_tables_agree_with_their_own_ratios_and_averages(reported):
    """Typed by hand from the paper: every printed speed-up is its throughput over vanilla's (to the printed
    0.1), and every model's four scores average to the printed AVG row, so a mistyped cell shows."""
    d2 = reported[reported["paper"] == "d2_cache"]
    assert len(d2) == 2 * 2 * 4 * 4 * 3 + 2 * 3 * 4
    for (table, model), averages in D2_AVERAGES.items():
        for method, average in averages.items():
            where = dict(table=table, model=model, method=method)
            scores = values(d2, metric="accuracy", **where)
            # the paper averages unrounded scores: within 0.1 of the mean of the printed ones
            assert len(scores) == 4 and abs(sum(scores) / 4 - average) <= 0.1 + 1e-9, (table, model, method)
            for task in ("gsm8k", "mbpp", "humaneval", "math500"):
                base = values(d2, table=table, model=model, method="vanilla", task=task, metric="throughput")[0]
                throughput = values(d2, metric="throughput", task=task, **where)[0]
                speedup = values(d2, metric="speedup", task=task, **where)[0]
                assert abs(throughput / base - speedup) <= 0.05 + 1e-9, (table, model, method, task)
    # spot checks against the paper's text: Dream-Inst GSM8K 2.62 -> 12.25 tokens/s (4.7x)
    gsm8k = dict(table="1", model="dream_7b_instruct", task="gsm8k")
    assert values(d2, method="vanilla", metric="throughput", **gsm8k) == [2.62]
    assert values(d2, method="d2_cache", metric="speedup", **gsm8k) == [4.7]
    assert values(d2, table="2", model="llada_8b_instruct", method="certainty_prior", task="gsm8k") == [79.0]


def test_secondary_transcriptions_are_labelled_and_agree_with_what_was_printed(reported):
    """WINO and KLASS Table 1 come from third-party transcriptions (the papers were not readable offline): every
    row says so, and the WINO cells agree with the step reductions and speed-up its abstract and table print."""
    rows = reported[reported["paper"].isin(["wino", "klass"]) & (reported["table"] == "1")]
    assert len(rows) == 12 + 20
    assert rows["note"].str.contains("transcri").all()
    wino = rows[rows["paper"] == "wino"]
    for task, reduction in (("gsm8k", 6.10), ("math500", 3.44), ("humaneval", 2.74)):
        assert abs(values(wino, method="wino", task=task, metric="tokens_per_step")[0] - reduction) <= 0.01 + 1e-9, task
    throughputs = [values(wino, method=m, task="gsm8k", metric="throughput")[0] for m in ("vanilla", "wino")]
    assert round(throughputs[1] / throughputs[0], 2) == values(wino, method="wino", task="gsm8k", metric="speedup")[0]
    assert values(wino, method="wino", task="gsm8k", metric="accuracy") == values(
        reported, paper="wino", table="abstract", method="wino", metric="accuracy")
    klass = rows[rows["paper"] == "klass"]
    assert values(klass, model="llada_8b_instruct", method="klass", task="math500", metric="accuracy") == [33.8]
    assert values(klass, model="dream_7b_instruct", method="vanilla", task="gsm8k", metric="accuracy") == [79.55]
    assert values(reported, paper="pc_sampler", method="pc_sampler", task="gsm8k") == [82.2]


def test_streaming_dllm_tables_agree_with_their_own_speedups(reported):
    """Each printed speed-up is the cell's tokens/s over the backbone's, within the rounding of both
    (the README prints one decimal); 2 models x 4 tasks x 2 lengths x 5 methods, 3 numbers each."""
    rows = reported[reported["paper"] == "streaming_dllm"]
    assert len(rows) == 2 * 4 * 2 * 5 * 3
    for (model, task, setting), cell in rows.groupby(["model", "task", "setting"]):
        base = values(cell, method="vanilla", metric="throughput")[0]
        for method in ("vanilla", "dkv_cache", "fast_dllm_prefix", "fast_dllm_prefix_parallel", "streaming_dllm"):
            tps = values(cell, method=method, metric="throughput")[0]
            printed = values(cell, method=method, metric="speedup")[0]
            low, high = (tps - 0.05) / (base + 0.05) - 0.05, (tps + 0.05) / (base - 0.05) + 0.05
            assert low <= printed <= high, (model, task, setting, method)
    headline = dict(model="llada_1_5", method="streaming_dllm", task="gsm8k", setting="gen_length=512")
    assert values(rows, metric="speedup", **headline) == [28.0]
