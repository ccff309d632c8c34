"""Scorers on known completions: GSM8K filters, OpenCompass GSM8K, code pass@1, MATH, long context."""

from __future__ import annotations

import lm_eval
import pytest
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from dllm_accel.eval import code_tasks, gsm8k, longctx, math_tasks
from dllm_accel.eval.data import default_data_dir, materialize_tasks, read_jsonl

DATA = default_data_dir()


class CannedLM(LM):
    """Answers each document with a fixed completion."""

    def __init__(self, completions: dict[int, str]) -> None:
        super().__init__()
        self.completions = completions

    def generate_until(self, requests):
        return [self.completions[r.doc_id] for r in requests]

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


@pytest.fixture(scope="module")
def fake_lm_evaluate(tmp_path_factory):
    tasks = TaskManager(
        include_path=str(materialize_tasks(tmp_path_factory.mktemp("tasks"), DATA)), include_defaults=False
    )

    def run(task: str, completions: dict[int, str], num_fewshot: int | None = None) -> dict[int, dict]:
        results = lm_eval.simple_evaluate(
            model=CannedLM(completions),
            tasks=[task],
            num_fewshot=num_fewshot,
            limit=len(completions),
            task_manager=tasks,
            bootstrap_iters=0,
            confirm_run_unsafe_code=True,
        )
        scores: dict[int, dict] = {}
        for entry in results["samples"][task]:
            for metric in entry["metrics"]:
                scores.setdefault(entry["doc_id"], {})[f"{metric},{entry['filter']}"] = entry[metric]
        return scores

    return run


@pytest.fixture(scope="module", autouse=True)
def _parallel_execution():
    code_tasks.configure_execution(workers=4, timeout_s=10.0)


# ------------------------------------------------------------------ GSM8K through lm-eval's own filters
def test_gsm8k_strict_and_flexible_extract(fake_lm_evaluate):
    completions = {
        0: " Janet sells 9 eggs a day. So the answer is 18.",  # gold 18: only the last number is found
        1: " It takes 2 + 1 = 3 bolts.\n#### 3",  # gold 3: both filters
        2: " The profit is $70,000.\n#### 70,000",  # gold 70000: commas and $ are ignored
        3: " #### 541",  # gold 540: wrong under both
    }
    scores = fake_lm_evaluate("dllm_gsm8k", completions, num_fewshot=0)
    strict = {doc: s["exact_match,strict-match"] for doc, s in scores.items()}
    flexible = {doc: s["exact_match,flexible-extract"] for doc, s in scores.items()}
    assert strict == {0: 0.0, 1: 1.0, 2: 1.0, 3: 0.0}
    assert flexible == {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0}


def test_opencompass_gsm8k_postprocess_variants():
    assert gsm8k.gsm8k_postprocess("The answer is 18\n\nQuestion: next 99") == "18"
    assert gsm8k.gsm8k_postprocess("so -10 degrees") == "-10"
    assert gsm8k.gsm8k_postprocess("no digits") == "NULL"
    assert gsm8k.oc_equal("18.0", "18") and not gsm8k.oc_equal("NULL", "18")
    # 2023 extraction: first paragraph only, digits only ("-10" becomes "10", "3.5" becomes "35")
    assert gsm8k.gsm8k_postprocess_legacy("it is -10 now\n\nlater 5") == "10"
    assert gsm8k.gsm8k_postprocess_legacy("pay $3.5 total") == "35"
    doc = {"answer": "steps\n#### 1,000"}
    assert gsm8k.oc_process_results(doc, ["The answer is 1000"]) == {"accuracy": 1.0, "accuracy_legacy": 1.0}
    assert gsm8k.oc_process_results({"answer": "x\n#### -3"}, ["The answer is -3"]) == {
        "accuracy": 1.0,
        "accuracy_legacy": 0.0,
    }


def test_17d0dc_shot_answers_are_the_train_answers_rewritten():
    row = read_jsonl(DATA / "gsm8k" / "train.jsonl.gz")[7364]
    shot = gsm8k.oc_17d0dc_answer(row["answer"])
    assert "<<" not in shot and shot.endswith("\nThe answer is 4\n")
    assert shot.startswith(
        "Angelo and Melanie think they should dedicate 3 hours to each of the 2 chapters, 3 hours x 2"
    )


# ------------------------------------------------------------------ code
def _verdicts(run, docs, completions):
    return [v[0]["status"] for v in run([[c] for c in completions], docs)]


@pytest.mark.heavy
@pytest.mark.slow
def test_humaneval_canonical_solutions_all_pass_and_a_wrong_one_fails():
    docs = read_jsonl(DATA / "humaneval" / "HumanEval.jsonl.gz")
    code_tasks.configure_execution(workers=4, humaneval_postprocess="lm_eval")
    try:
        statuses = _verdicts(code_tasks.execute_humaneval, docs, [d["canonical_solution"] for d in docs])
        wrong = _verdicts(code_tasks.execute_humaneval, docs[:1], ["    return not True\n"])
    finally:
        code_tasks.configure_execution(workers=4)
    assert statuses.count("passed") == 164
    assert wrong == ["failed"]


@pytest.mark.slow
def test_the_papers_sanitizer_drops_helpers_the_entry_point_does_not_call():
    """Dream/Fast-dLLM's scorer keeps only what ``entry_point`` reaches, so HumanEval/50's canonical
    solution fails there: its test calls ``encode_shift``, which ``decode_shift`` never references."""
    docs = read_jsonl(DATA / "humaneval" / "HumanEval.jsonl.gz")
    statuses = _verdicts(code_tasks.execute_humaneval, docs, [d["canonical_solution"] for d in docs])
    failed = [d["task_id"] for d, status in zip(docs, statuses, strict=True) if status != "passed"]
    assert failed == ["HumanEval/50"]
    assert "def encode_shift" not in code_tasks.humaneval_solution(docs[50], docs[50]["canonical_solution"])


@pytest.mark.slow
def test_humaneval_plus_canonical_solutions_pass_on_the_plus_inputs():
    """Every 16th task; HumanEval/32's OriginFmt check is broken upstream (it unpacks the float
    ``find_zero`` returns), so even the canonical solution fails it."""
    docs = read_jsonl(DATA / "humaneval_plus" / "HumanEvalPlus-OriginFmt-v0.1.10.jsonl.gz")[::16]
    statuses = _verdicts(code_tasks.execute_humaneval, docs, [d["canonical_solution"] for d in docs])
    failed = [d["task_id"] for d, status in zip(docs, statuses, strict=True) if status != "passed"]
    assert failed == ["HumanEval/32"] and len(docs) == 11


@pytest.mark.slow
def test_mbpp_canonical_code_passes_and_a_wrong_one_fails():
    rows = [r for r in read_jsonl(DATA / "mbpp" / "mbpp.jsonl.gz") if r["task_id"] in code_tasks.MBPP_TEST_IDS]
    docs = rows[::10]
    statuses = _verdicts(code_tasks.execute_mbpp, docs, [d["code"] for d in docs])
    assert statuses == ["passed"] * len(docs)
    assert _verdicts(code_tasks.execute_mbpp, docs[:1], ["def remove_Occ(s, ch):\n    return s\n"]) == ["failed"]


def test_mbpp_plus_canonical_code_passes_the_plus_tests():
    docs = read_jsonl(DATA / "mbpp_plus" / "MbppPlus-OriginFmt-v0.2.0.jsonl.gz")[::40]
    statuses = _verdicts(code_tasks.execute_mbpp, docs, [d["code"] for d in docs])
    assert statuses == ["passed"] * len(docs)


def test_sanitize_keeps_what_the_entry_point_reaches():
    completion = (
        "Here is the code:\n```python\nimport math\n\ndef helper(x):\n    return math.sqrt(x)\n\n"
        "def unused():\n    return 1\n\ndef root(x):\n    return helper(x)\n\nprint(root(4))\n```\nIt works."
    )
    code = code_tasks.sanitize(code_tasks.fenced_code(completion), "root")
    assert "import math" in code and "def helper" in code and "def root" in code
    assert "unused" not in code and "print" not in code and "It works" not in code


def test_sanitize_picks_the_longest_parsable_span():
    text = "Sure! Here it is\ndef f(a):\n    return a + 1\n\nThat is all (really"
    assert code_tasks.longest_parsable_span(text) == "def f(a):\n    return a + 1"
    assert code_tasks.longest_parsable_span("x = 1") == "x = 1"  # a single line is a span
    long_text = "\n".join(f"v{i} = {i}" for i in range(150))
    assert code_tasks.longest_parsable_span(long_text).count("\n") == 99  # only the first 100 lines count


# ------------------------------------------------------------------ MATH
@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("10 \\text{ inches}", "10"),
        ("x = 5", "5"),
        ("1,000", "1000"),
        ("\\boxed{7}", "7"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("90^\\circ", "90"),
    ],
)
def test_minerva_normalisation(raw, normalized):
    assert math_tasks.normalize_final_answer(raw) == normalized


def test_math_answer_extraction_and_scoring():
    solution = "So the total is $\\boxed{\\frac{3}{4}}$."
    assert math_tasks.unbox(math_tasks.last_boxed(solution)) == "\\frac{3}{4}"
    doc = {"solution": solution, "answer": math_tasks.normalize_final_answer("\\frac{3}{4}")}
    right = "Final Answer: The final answer is $0.75$. I hope it is correct."
    wrong = "Final Answer: The final answer is $4/3$. I hope it is correct."
    assert math_tasks.process_results(doc, [right]) == {"exact_match": 1, "math_verify": 1}
    assert math_tasks.process_results(doc, [wrong]) == {"exact_match": 0, "math_verify": 0}
    assert math_tasks.unnormalized_answer("no final line") == math_tasks.INVALID_ANSWER


# ------------------------------------------------------------------ long context
def test_long_context_scorers():
    assert longctx.passkey_correct("48213", " 48213. The pass key is 48213")
    assert not longctx.passkey_correct("48213", " 4821 3")
    assert longctx.string_match_all(["1234567", "7654321"], "the numbers are 1234567 and 0") == 0.5
    doc = {"metric": "string_match_all", "answers": ["ABCDE", "FGHIJ"]}
    assert longctx.process_results(doc, ["they are: abcde, fghij"]) == {"score": 1.0}
