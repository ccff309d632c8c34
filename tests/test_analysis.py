"""Tables and figures on a small synthetic results store written with the runner's own RunStore."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from analysis.catalog import BY_EXPERIMENT, method_label
from analysis.compare import Bands, compare
from analysis.figures import pareto_front, write_figures
from analysis.reported import load_reported
from analysis.store import load_runs, load_samples, run_identity
from analysis.tables import write_tables
from dllm_accel.measure import summarize
from dllm_accel.results import RunStore, run_directory

GIB = 1024**3


def sample(doc_id: int, score: float, wall_s: float, gen: int, answer: int, *, first: bool = False, peak: float | None = None,
           stats: dict | None = None, **fields) -> dict:
    return {
        "key": f"t/{doc_id}/0",
        "task": "t",
        "doc_id": doc_id,
        "repeat": 0,
        "prompt_hash": f"h{doc_id}",
        "status": "ok",
        "process": 0,
        "batch_id": doc_id,
        "timing": {"batch_id": doc_id, "first_call": first, "wall_s": wall_s,
                   "peak_allocated_bytes": None if peak is None else int(peak * GIB),
                   "peak_reserved_bytes": None if peak is None else int(peak * GIB)},
        "nfe": gen,
        "tokens": {"all_positions": gen, "non_eos": answer + 10, "answer": answer, "before_eos": answer + 5},
        "method_stats": stats or {},
        "scores": {"exact_match": score},
        **fields,
    }


def write_run(root, experiment, model, method, task, records, options=None, sampler=None, shots=5, batch_size=1):
    config = {
        "experiment_name": experiment,
        "model": {"name": model, "rope_scaling": 1.0},
        "method": {"name": method, "options": options or {}, "sampler": {}},
        "task": {"name": task, "num_fewshot": shots, "sampler": sampler or {"gen_length": 256, "steps": 256}},
        "sampler": {},
        "seed": 1234,
        "batch_size": batch_size,
    }
    store = RunStore(run_directory(root, config))
    store.write_config(yaml.safe_dump(config))
    for record in records:
        store.append(record)
    store.write_summary(summarize(records) | {"environment": {"device": "cpu", "gpu": None}})
    return store.dir


def table1_runs(root, accuracy: tuple[float, float], times: tuple[float, float]) -> None:
    """Vanilla and prefix-cache Fast-dLLM on GSM8K (gen 256); each doc scores ``accuracy`` on average."""
    for method, options, acc, wall in (("vanilla", {}, accuracy[0], times[0]),
                                       ("fast_dllm", {"mode": "prefix"}, accuracy[1], times[1])):
        right = round(acc / 10)  # doc 0 is the warm-up batch: scored, but excluded from throughput
        records = [sample(i, float(i < right), 100.0 if i == 0 else wall, 256, 100, first=i == 0) for i in range(10)]
        write_run(root, "fast_dllm_table1", "llada_8b_instruct", method, "gsm8k", records, options)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("runs"))


def build_store(root):
    """Fast-dLLM Table 1 runs, a new method, a length/depth sweep and per-layer recompute statistics."""
    table1_runs(root, accuracy=(80.0, 70.0), times=(10.0, 3.2))
    write_run(root, "fast_dllm_table1", "llada_8b_instruct", "my_method", "gsm8k",
              [sample(i, 1.0, 1.0, 256, 100) for i in range(3)])
    for method, speed, memory in (("vanilla", 1.0, 16.0), ("sparse_dllm", 4.0, 16.5)):
        records = [
            sample(10 * i + j, float(j != 1 or method == "vanilla"), length / 1024 / speed, 256, 50, peak=memory + length / 4096,
                   target_len=length, depth=depth)
            for i, length in enumerate((1024, 2048)) for j, depth in enumerate((0.0, 0.5, 1.0))
        ]
        write_run(root, "sparse_dllm_fig5", "llada_8b_instruct", method, "passkey", records,
                  sampler={"gen_length": 256, "steps": 256, "block_length": 32})
    layers = {f"recompute_fraction_layer_{i}": 0.2 + 0.1 * i for i in range(4)}
    write_run(root, "dllm_cache_speedups", "llada_8b_instruct", "dllm_cache", "gsm8k",
              [sample(i, 1.0, 1.0, 256, 100, stats=layers | {"recompute_fraction": 0.35}) for i in range(2)])
    return root


def test_runs_are_read_with_labels_and_every_throughput(store):
    runs = load_runs(store).set_index(["experiment", "label", "task"])
    assert len(runs) == 6
    vanilla = runs.loc[("fast_dllm_table1", "vanilla", "gsm8k")]
    assert vanilla["accuracy"] == pytest.approx(80.0)
    assert vanilla["throughput_answer"] == pytest.approx(100 / 10.0)  # warm batches only
    assert vanilla["throughput_all_positions"] == pytest.approx(256 / 10.0)
    assert vanilla["tokens_per_step"] == 1.0 and vanilla["shots"] == 5
    assert runs.loc[("fast_dllm_table1", "fast_dllm_prefix", "gsm8k"), "opt_mode"] == "prefix"
    assert runs.loc[("dllm_cache_speedups", "dllm_cache", "gsm8k"), "stat_recompute_fraction_layer_3"] == pytest.approx(0.5)
    assert runs.loc[("sparse_dllm_fig5", "sparse_dllm", "passkey"), "peak_memory_gib"] > 16.5


def test_method_labels_follow_the_settings_not_the_file_name():
    assert method_label("vanilla", {}, {}) == "vanilla"
    assert method_label("vanilla", {}, {"threshold": 0.9}) == "fast_dllm_parallel"
    assert method_label("fast_dllm", {"mode": "dual"}, {"threshold": 0.9}) == "fast_dllm_dual_parallel"
    assert method_label("fast_dllm", {"mode": "prefix"}, {}) == "fast_dllm_prefix"
    assert method_label("my_method", {}, {}) == "my_method"
    assert method_label("sparse_dllm", {"keep_ratio": 0.5}, {"threshold": 0.9}) == "sparse_dllm_parallel"
    assert method_label("vanilla", {}, {"remasking": "random"}) == "vanilla_random"
    assert method_label("dkv_cache", {"variant": "pd"}, {}) == "dkv_cache_pd"
    assert method_label("dkv_cache_greedy", {"window_size": 0}, {"policy": "random_order"}) == "dkv_cache_greedy"
    assert method_label("dkv_cache_greedy", {"window_size": 4}, {"policy": "random_order"}) == "dkv_cache_greedy_window"


@pytest.mark.slow
def test_comparison_verdicts_missing_rows_and_new_methods(store):
    table = compare(load_reported(), load_runs(store), BY_EXPERIMENT["fast_dllm_table1"])
    cell = table.set_index(["task", "method", "setting", "metric"])
    vanilla = cell.loc[("gsm8k", "vanilla", "gen_length=256", "accuracy")]
    assert (vanilla["paper"], vanilla["ours"], vanilla["verdict"]) == (79.3, pytest.approx(80.0), "pass")
    assert vanilla["difference"] == pytest.approx(0.7)
    prefix = cell.loc[("gsm8k", "fast_dllm_prefix", "gen_length=256", "accuracy")]
    # 9.5 points below the paper, but on 10 documents the 95% interval is +-30 points: not a failure
    assert prefix["ours_ci95"] == pytest.approx(1.96 * 100 * (0.7 * 0.3 / 9) ** 0.5)
    assert prefix["verdict"] == "pass" and prefix["difference"] == pytest.approx(70.0 - 79.5)
    speedup = cell.loc[("gsm8k", "fast_dllm_prefix", "gen_length=256", "speedup")]
    assert speedup["ours"] == pytest.approx(10.0 / 3.2) and speedup["verdict"] == "pass"  # 3.125 vs 3.2
    throughput = cell.loc[("gsm8k", "vanilla", "gen_length=256", "throughput")]
    assert throughput["verdict"] == "info" and throughput["difference"] == pytest.approx(10.0 / 6.7)
    missing = cell.loc[("gsm8k", "fast_dllm_parallel", "gen_length=256", "accuracy")]
    assert missing["verdict"] == "missing" and pd.isna(missing["ours"])
    assert cell.loc[("math", "vanilla", "gen_length=512", "accuracy"), "verdict"] == "missing"
    mine = table[table["method"] == "my_method"]
    assert set(mine["verdict"]) == {"ours only"} and set(mine["metric"]) == {"accuracy", "throughput", "speedup"}
    assert mine.set_index("metric").loc["speedup", "ours"] == pytest.approx(100 / 10.0)
    looser = compare(load_reported(), load_runs(store), BY_EXPERIMENT["fast_dllm_table1"], bands=Bands(10.0, 0.01))
    looser = looser.set_index(["task", "method", "setting", "metric"])
    assert looser.loc[("gsm8k", "fast_dllm_prefix", "gen_length=256", "accuracy"), "verdict"] == "pass"
    assert looser.loc[("gsm8k", "fast_dllm_prefix", "gen_length=256", "speedup"), "verdict"] == "fail"


def test_length_table_measures_each_context_length(store):
    table = compare(load_reported(), load_runs(store), BY_EXPERIMENT["sparse_dllm_fig5"], load_samples(store))
    cell = table.set_index(["model", "method", "setting", "metric"])
    sparse = cell.loc[("llada_8b_instruct", "sparse_dllm", "seq_len=2048", "throughput")]
    assert sparse["ours"] == pytest.approx(3 * 256 / (3 * 2048 / 1024 / 4.0))
    assert sparse["paper"] == 22.4
    assert cell.loc[("llada_8b_instruct", "sparse_dllm", "seq_len=8192", "throughput"), "verdict"] == "missing"
    oom = cell.loc[("llada_8b_instruct", "fast_dllm", "seq_len=8192", "throughput")]
    assert oom["verdict"] == "OOM"


def test_tables_are_written_as_markdown_latex_and_csv(store, tmp_path):
    banner = "SMOKE OUTPUT: tiny random-weight models"
    written = write_tables(store, tmp_path, ["fast_dllm_table1", "dyllm_table"], banner=banner)
    assert [p.name for p in written] == ["fast_dllm_table1.md", "dyllm_table.md"]
    text = (tmp_path / "fast_dllm_table1.md").read_text()
    assert banner in text and "| gsm8k | vanilla | gen_length=256 | accuracy (%) | 79.30 | 80.00 ± 26.13 | +0.70 pt | pass |" in text
    # the paper's own grid: benchmark and length rows, method columns, ours / paper per metric
    assert "| task | setting | vanilla | fast_dllm_prefix | fast_dllm_parallel | fast_dllm_prefix_parallel |" in text
    # every batch took the same time: the bootstrap interval of tok/s and speed-up is 0
    assert "| gsm8k | gen_length=256 | 80.00 ± 26.13 / 79.30 ✓<br>10.00 ± 0.00 / 6.70<br>1.00× ± 0.00 / 1.00× ✓ |" in text
    assert "| gsm8k | fast_dllm_parallel | gen_length=256 | accuracy (%) | 79.20 | — |  | missing |" in text
    dyllm = pd.read_csv(tmp_path / "dyllm_table.csv")
    assert set(dyllm["verdict"]) == {"missing"} and dyllm["ours"].isna().all()  # no DyLLM runs: nothing filled in
    tex = (tmp_path / "fast_dllm_table1.tex").read_text()
    assert r"\begin{longtable}" in tex and r"fast\_dllm\_prefix" in tex and "79.30" in tex
    assert r"task & setting & vanilla & fast\_dllm\_prefix" in tex  # the paper's grid first
    assert r"\shortstack[l]{80.00 $\pm$ 26.13 / 79.30 pass\\10.00" in tex
    assert pd.read_csv(tmp_path / "fast_dllm_table1.csv")["verdict"].isin(["pass", "fail", "missing", "info", "ours only"]).all()
    assert "fast_dllm_table1.md" in (tmp_path / "index.md").read_text()
    with pytest.raises(ValueError, match="unknown paper table.*no_such_table"):
        write_tables(store, tmp_path, ["no_such_table"])


@pytest.mark.slow
def test_figures_are_written_as_png_and_pdf(store, tmp_path):
    paths = write_figures(store, tmp_path, banner="SMOKE OUTPUT")
    names = {p.name for p in paths}
    for stem in ("pareto_fast_dllm_table1_llada_8b_instruct_gsm8k", "length_sparse_dllm_fig5_llada_8b_instruct", "heatmap_sparse_dllm_fig5_llada_8b_instruct_passkey",
                 "recompute_llada_8b_instruct"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, stem
    assert all(p.stat().st_size > 5_000 for p in paths)


def test_pareto_front_keeps_only_undominated_points():
    points = pd.DataFrame({"x": [1, 2, 3, 4, 2.5], "y": [90, 85, 88, 70, 60]})
    front = pareto_front(points, "x", "y")
    assert front[["x", "y"]].values.tolist() == [[1, 90], [3, 88], [4, 70]]


def test_an_interrupted_run_is_listed_without_numbers(tmp_path):
    config = {"experiment_name": "dyllm_table", "model": {"name": "m"}, "method": {"name": "dyllm", "options": {}},
              "task": {"name": "gsm8k"}}
    store = RunStore(run_directory(tmp_path, config))
    store.write_config(yaml.safe_dump(config))
    runs = load_runs(tmp_path)
    assert runs.loc[0, "complete"] is False or not runs.loc[0, "complete"]
    assert pd.isna(runs.loc[0, "accuracy"]) and runs.loc[0, "samples"] == 0
    assert json.loads(json.dumps(runs.loc[0, "label"])) == "dyllm"


def test_every_method_has_a_colour_of_its_own_and_a_new_one_takes_none_of_theirs(monkeypatch, tmp_path):
    from analysis import figures
    from analysis.catalog import METHOD_ORDER

    labels = figures.method_labels()
    assert len({figures.color(label) for label in labels}) == len(labels)
    assert figures.color("sparse_dllm keep_ratio=0.25") == figures.color("sparse_dllm")
    catalog = {label: figures.color(label) for label in METHOD_ORDER}
    # a preset added to conf/method (README's guide): still one colour per method, the catalog's unchanged
    for path in figures.METHOD_CONF.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "my_method.yaml").write_text("name: my_method\n")
    monkeypatch.setattr(figures, "METHOD_CONF", tmp_path)
    with_new = figures.method_labels()
    assert "my_method" in with_new
    assert len({figures.color(label) for label in with_new}) == len(with_new)
    assert {label: figures.color(label) for label in METHOD_ORDER} == catalog


@pytest.mark.slow
def test_accuracy_fails_only_outside_our_interval_widened_by_the_paper_spread(tmp_path):
    """400 documents: the interval is about +-4.5 points; 70% against the paper's 79.5% fails, 77% passes."""
    for method, options, right in (("vanilla", {}, 320), ("fast_dllm", {"mode": "prefix"}, 280)):
        records = [sample(i, float(i < right), 1.0, 256, 100) for i in range(400)]
        write_run(tmp_path, "fast_dllm_table1", "llada_8b_instruct", method, "gsm8k", records, options)
    cell = compare(load_reported(), load_runs(tmp_path), BY_EXPERIMENT["fast_dllm_table1"]).set_index(
        ["task", "method", "setting", "metric"])
    prefix = cell.loc[("gsm8k", "fast_dllm_prefix", "gen_length=256", "accuracy")]
    assert prefix["ours_ci95"] == pytest.approx(1.96 * 100 * (0.7 * 0.3 / 399) ** 0.5) and prefix["verdict"] == "fail"
    assert cell.loc[("gsm8k", "vanilla", "gen_length=256", "accuracy"), "verdict"] == "pass"  # 80.0 vs 79.3
    widened = compare(load_reported(), load_runs(tmp_path), BY_EXPERIMENT["fast_dllm_table1"], bands=Bands(5.5, 0.2))
    widened = widened.set_index(["task", "method", "setting", "metric"])
    assert widened.loc[("gsm8k", "fast_dllm_prefix", "gen_length=256", "accuracy"), "verdict"] == "pass"


def test_tables_and_figures_without_results_say_so_and_fail(tmp_path, capsys):
    from experiments import reproduce

    for what in ("tables", "figures"):
        with pytest.raises(SystemExit, match="no results in .*run `make reproduce"):
            reproduce.main(["--only", what, "--results", str(tmp_path / "empty" / "runs")])


@pytest.mark.slow
def test_speedup_interval_comes_from_a_bootstrap_over_batches_and_widens_the_band(tmp_path):
    """Batch times alternating 2 s and 3 s: a 4.0x speed-up with a bootstrap 95% interval of about 14%,
    so 25% above the paper's 3.2x passes the 20% band widened by it, and fails without the band."""
    walls = {"vanilla": (10.0, 10.0), "fast_dllm": (2.0, 3.0)}
    for method, options in (("vanilla", {}), ("fast_dllm", {"mode": "prefix"})):
        fast, slow = walls[method]
        records = [sample(i, 1.0, fast if i % 2 else slow, 256, 100) for i in range(1, 9)]
        write_run(tmp_path, "fast_dllm_table1", "llada_8b_instruct", method, "gsm8k", records, options)
    runs = load_runs(tmp_path).set_index("label")
    assert runs.loc["vanilla", "throughput_answer_rse"] == 0 and runs.loc["fast_dllm_prefix", "throughput_answer_rse"] > 0
    cell = compare(load_reported(), load_runs(tmp_path), BY_EXPERIMENT["fast_dllm_table1"])
    speedup = cell.set_index(["task", "method", "setting", "metric"]).loc[("gsm8k", "fast_dllm_prefix", "gen_length=256", "speedup")]
    assert speedup["ours"] == pytest.approx(4.0) and 0.1 < speedup["ours_ci95"] / 4.0 < 0.2
    assert abs(speedup["ours"] / 3.2 - 1) > 0.2 and speedup["verdict"] == "pass"
    narrow = compare(load_reported(), load_runs(tmp_path), BY_EXPERIMENT["fast_dllm_table1"], bands=Bands(1.0, 0.0))
    narrow = narrow.set_index(["task", "method", "setting", "metric"])
    assert narrow.loc[("gsm8k", "fast_dllm_prefix", "gen_length=256", "speedup"), "verdict"] == "fail"


def test_tokens_per_step_and_memory_ratio_carry_bootstrap_intervals(tmp_path):
    """Every ratio cell gets its 95% interval where batches exist: tokens per step from positions over NFE
    per batch, memory ratio from the two runs' per-call peaks (their relative errors combined)."""
    from analysis.store import peak_memory_rse, tokens_per_step_rse

    nfes = (64, 96)  # threshold decoding: the forwards a batch needed vary, so tokens per step does
    records = [sample(i, 1.0, 1.0, 256, 100, nfe=nfes[i % 2]) for i in range(1, 9)]
    write_run(tmp_path, "fast_dllm_fig5", "llada_8b_instruct", "vanilla", "gsm8k", records,
              sampler={"gen_length": 256, "steps": 256, "threshold": 0.9})
    for method, peaks in (("vanilla", (15.0, 16.0)), ("dllm_cache", (16.0, 18.0))):
        records = [sample(i, 1.0, 1.0, 256, 100, peak=peaks[i % 2]) for i in range(1, 9)]
        write_run(tmp_path, "sparse_dllm_table1", "llada_8b_instruct", method, "mmlu", records)
    runs = load_runs(tmp_path).set_index(["experiment", "label"])
    steady = [sample(i, 1.0, 1.0, 256, 100, peak=16.0) for i in range(1, 5)]
    assert tokens_per_step_rse(steady) == 0 and peak_memory_rse(steady) == 0  # nothing varies: no width
    assert peak_memory_rse([sample(i, 1.0, 1.0, 256, 100) for i in range(4)]) is None  # CPU: no allocator peaks

    fig5 = compare(load_reported(), load_runs(tmp_path), BY_EXPERIMENT["fast_dllm_fig5"])
    cell = fig5.set_index(["method", "setting", "metric"]).loc[("fast_dllm_parallel", "threshold=0.9", "tokens_per_step")]
    rse = runs.loc[("fast_dllm_fig5", "fast_dllm_parallel"), "tokens_per_step_rse"]
    assert cell["ours"] == pytest.approx(256 / 80) and 0 < rse < 0.1
    assert cell["ours_ci95"] == pytest.approx(1.96 * rse * 256 / 80)

    table = compare(load_reported(), load_runs(tmp_path), BY_EXPERIMENT["sparse_dllm_table1"])
    ratio = table.set_index(["model", "method", "task", "metric"]).loc[("llada_8b_instruct", "dllm_cache", "mmlu", "memory_ratio")]
    mine, base = (runs.loc[("sparse_dllm_table1", m), "peak_memory_gib_rse"] for m in ("dllm_cache", "vanilla"))
    assert ratio["ours"] == pytest.approx(17.0 / 15.5) and mine > 0 and base > 0
    assert ratio["ours_ci95"] == pytest.approx(1.96 * (mine**2 + base**2) ** 0.5 * 17.0 / 15.5)
    from analysis.tables import fmt_ours

    assert fmt_ours(ratio.to_dict() | {"metric": "memory_ratio"}).startswith("1.10× ± ")
    assert fmt_ours(cell.to_dict() | {"metric": "tokens_per_step"}).startswith("3.20 ± ")


@pytest.mark.slow
def test_every_latex_table_compiles(tmp_path):
    """Each generated .tex (paper grids, long forms, a run table with a batch check) compiles in a plain
    article with the packages the files name, with no character dropped and no float taller than a page."""
    import shutil
    import subprocess

    from analysis.tables import TEX_PACKAGES

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not on PATH (apt-get install texlive-latex-base texlive-latex-recommended)")
    root = build_store(tmp_path / "runs")
    for batch in (1, 4):  # a non-paper experiment: the run table, with its batch-size check column
        records = [sample(i, 1.0, 1.0, 256, 100) for i in range(3)]
        write_run(root, "batch_axis", "llada_8b_instruct", "vanilla", "gsm8k", records, batch_size=batch)
    out = tmp_path / "tables"
    write_tables(root, out)
    sources = sorted(out.glob("*.tex"))
    assert len(sources) > 10 and "batch check" in (out / "batch_axis.tex").read_text()
    for source in sources:
        assert r"\usepackage{" + ",".join(TEX_PACKAGES) + "}" in source.read_text()
        document = tmp_path / f"{source.stem}-doc.tex"
        document.write_text(
            "\\documentclass{article}\n\\usepackage{" + ",".join(TEX_PACKAGES) + "}\n"
            f"\\begin{{document}}\n\\input{{{source}}}\n\\end{{document}}\n"
        )
        done = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        log = document.with_suffix(".log").read_text(errors="replace")
        assert done.returncode == 0, f"{source.name}: {done.stdout[-1500:]}"
        assert document.with_suffix(".pdf").is_file()
        assert "Missing character" not in log and "Overfull \\vbox" not in log, source.name


def test_a_one_block_run_reads_its_block_as_the_generation_length():
    config = {"model": {"name": "dream_7b_instruct"}, "task": {"name": "gsm8k", "sampler": {"block_length": 32}},
              "method": {"name": "d2_cache", "sampler": {"block_length": "gen_length"}}, "sampler": {"gen_length": 256}}
    assert run_identity(config)["block_length"] == 256
