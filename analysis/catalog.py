"""Which experiment reproduces which paper table, and how a run is named in the tables.

A run's ``label`` is the paper-level method name of what it ran (``fast_dllm_dual_parallel``
is Fast-dLLM's dual cache with threshold decoding), derived from the method and sampler
settings, so the same settings give the same label whatever config file produced them. A
method the papers never ran keeps its registered name and shows up as an extra row.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperTable:
    """One ``conf/experiment`` entry that reproduces published numbers.

    ``stand_ins`` names our label for a paper method whose settings the paper does not give
    (Sparse-dLLM's "Fast-dLLM" baseline is run as the dual cache at one token per step).
    ``rows`` is what the paper's rows are: ``task`` (benchmark and setting rows, method columns:
    Fast-dLLM) or ``method`` (method rows, benchmark columns: Sparse-dLLM, DyLLM).
    """

    experiment: str
    paper: str
    tables: tuple[str, ...]
    title: str
    stand_ins: tuple[tuple[str, str], ...] = ()
    rows: str = "task"

    def our_label(self, paper_method: str) -> str:
        return dict(self.stand_ins).get(paper_method, paper_method)


SPARSE_FAST = (("fast_dllm", "fast_dllm_dual"),)
D2_CACHE = (("d2_cache", "d2_cache_certainty_prior"),)  # d2Cache always decodes with its certainty-prior rule
# Streaming-dLLM decodes with its own rule (the context-aware threshold and the EOS early exit)
STREAMING = (("streaming_dllm", "streaming_dllm_streaming_threshold"),)
PAPER_TABLES = (
    PaperTable("sparse_dllm_table1", "sparse_dllm", ("1a", "1b"), "Sparse-dLLM Table 1 (LLaDA-8B-Instruct, LLaDA-1.5)",
               SPARSE_FAST, rows="method"),
    PaperTable("sparse_dllm_table2", "sparse_dllm", ("2a", "2b"), "Sparse-dLLM Table 2 (Dream-v0-7B Base, Instruct)",
               SPARSE_FAST, rows="method"),
    PaperTable("sparse_dllm_fig5", "sparse_dllm", ("fig5",), "Sparse-dLLM Fig. 5 (throughput, memory vs length)",
               SPARSE_FAST),
    PaperTable("dyllm_table", "dyllm", ("result_table",), "DyLLM result table (LLaDA-8B-Instruct, Dream-7B-Instruct)",
               rows="method"),
    PaperTable("dyllm_curves", "dyllm", ("curves",), "DyLLM accuracy vs throughput, 1/2/4 tokens per step"),
    PaperTable("fast_dllm_table1", "fast_dllm", ("1",), "Fast-dLLM Table 1 (LLaDA-8B-Instruct)"),
    PaperTable("fast_dllm_table2", "fast_dllm", ("2",), "Fast-dLLM Table 2 (Dream-v0-7B-Base)"),
    PaperTable("fast_dllm_table3_4", "fast_dllm", ("3-4",), "Fast-dLLM Tables 3-4 (LLaDA GSM8K, long and 8-shot)"),
    PaperTable("fast_dllm_fig5", "fast_dllm", ("fig5",), "Fast-dLLM Fig. 5 (tokens per step vs threshold)"),
    PaperTable("dllm_cache_speedups", "dllm_cache", ("radar",), "dLLM-Cache speed-ups (README radar figure)"),
    PaperTable("dkv_cache_table1", "dkv_cache", ("1",), "dKV-Cache Table 1 (LLaDA-8B-Instruct, random and confidence remasking)"),
    PaperTable("dkv_cache_table2", "dkv_cache", ("2",), "dKV-Cache Table 2 (Dream-v0-7B-Base)"),
    PaperTable("frechet_readme", "fast_dllm_pp", ("readme",),
               "Fast-dLLM++ README (LLaDA-8B-Instruct: GSM8K/HumanEval 256 prefix, GSM8K 1024 dual)",
               (("threshold", "fast_dllm_prefix_parallel"), ("factor", "fast_dllm_prefix_parallel"))),
    PaperTable("wino_gsm8k", "wino", ("abstract",), "WINO (LLaDA-8B-Instruct GSM8K, the abstract's numbers)"),
    PaperTable("d2_cache_table1", "d2_cache", ("1",), "d2Cache Table 1 (LLaDA-8B-Instruct, Dream-v0-7B-Instruct)",
               D2_CACHE),
    PaperTable("d2_cache_table2", "d2_cache", ("2",), "d2Cache Table 2 (decoding schemes, one block, Instruct models)",
               D2_CACHE),
    PaperTable("d2_cache_table4", "d2_cache", ("4",), "d2Cache Table 4 (LLaDA-8B-Base, Dream-v0-7B-Base)", D2_CACHE),
    PaperTable("wino_table1", "wino", ("1",), "WINO Table 1 (LLaDA-8B-Instruct; corroborated cells of a transcription)"),
    PaperTable("klass_table1", "klass", ("1",),
               "KLASS Table 1 (LLaDA-8B-Instruct, Dream-v0-7B-Instruct; cells two transcriptions agree on)"),
    PaperTable("pc_sampler_gsm8k", "pc_sampler", ("readme",), "PC-Sampler README (LLaDA-8B-Instruct GSM8K)"),
    PaperTable("streaming_dllm_llada", "streaming_dllm", ("llada_1_5",), "Streaming-dLLM README (LLaDA-1.5)", STREAMING),
    PaperTable("streaming_dllm_dream", "streaming_dllm", ("dream",), "Streaming-dLLM README (Dream-v0-7B-Base)",
               STREAMING),
)
BY_EXPERIMENT = {t.experiment: t for t in PAPER_TABLES}

# our task configs -> the paper column they fill (each paper's prompt variant is its own task config)
TASK_COLUMNS = {
    "gsm8k_oc_llada": "gsm8k",
    "gsm8k_oc_dream": "gsm8k",
    "gsm8k_cot": "gsm8k",
    "minerva_math": "math",
}


def task_column(task: str) -> str:
    return TASK_COLUMNS.get(task, task)

# setting keys that describe the method itself: a speed-up compares against the vanilla run
# that shares every other key
METHOD_KEYS = ("threshold",)

# paper order of the rows; labels not listed sort after these, alphabetically
METHOD_ORDER = (
    "vanilla",
    "dllm_cache",
    "dkv_cache",
    "dkv_cache_prefill",
    "dkv_cache_pd",
    "vanilla_random",
    "dkv_cache_greedy",
    "dkv_cache_greedy_window",
    "fast_dllm",
    "fast_dllm_prefix",
    "fast_dllm_dual",
    "fast_dllm_parallel",
    "fast_dllm_prefix_parallel",
    "fast_dllm_dual_parallel",
    "sparse_dllm",
    "dyllm",
    "frechet",
    "fast_dllm_prefix_frechet",
    "fast_dllm_dual_frechet",
    "wino",
    "klass",
    "pc_sampler",
    "d2_cache",
    "certainty_prior",
    "d2_cache_certainty_prior",
    "streaming_threshold",
    "streaming_dllm",
    "streaming_dllm_streaming_threshold",
)

PARALLEL_KEYS = ("threshold", "factor", "confidence_threshold")  # parallel decoding is a sampler setting
CACHE_MODE_KEYS = ("mode", "cache", "cache_mode")


def method_label(method: str, options: dict, sampler: dict) -> str:
    """The paper-level name of a method run (see the module docstring). A registered decoding rule
    (``policy``) names the run after the rule, prefixed by the cache it decodes from."""
    policy = sampler.get("policy")
    if method == "dkv_cache_greedy":  # it always decodes with its own random_order rule
        return "dkv_cache_greedy_window" if options.get("window_size") else "dkv_cache_greedy"
    if policy:
        base = method_label(method, options, {k: v for k, v in sampler.items() if k != "policy"})
        return policy if base == "vanilla" else f"{base}_{policy}"
    parallel = any(sampler.get(k) is not None for k in PARALLEL_KEYS)
    if method == "vanilla":
        if parallel:
            return "fast_dllm_parallel"
        return "vanilla_random" if sampler.get("remasking") == "random" else "vanilla"
    if method == "fast_dllm":
        mode = next((options[k] for k in CACHE_MODE_KEYS if options.get(k)), "prefix")
        if mode == "none":
            return "fast_dllm_parallel" if parallel else "vanilla"
        return f"fast_dllm_{mode}" + ("_parallel" if parallel else "")
    if method == "dkv_cache" and options.get("variant") in ("prefill", "pd"):
        method = f"dkv_cache_{options['variant']}"
    return f"{method}_parallel" if parallel else method  # a combination: reuse + Fast-dLLM's decoding


def method_rank(label: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(label), "") if label in METHOD_ORDER else (len(METHOD_ORDER), label)
