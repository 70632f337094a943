"""Check `vist2 eval score` against LongBench's official eval.py on prediction files for every subset.

    python benchmarks/eval/longbench_scorer_check.py write /tmp/lb-official --seed 8 --lines 60
    # in /tmp/lb-official, with THUDM/LongBench's LongBench/eval.py and metrics.py copied there and
    # a scratch venv holding numpy, rouge==1.0.1, jieba==0.42.1, fuzzywuzzy==0.18.0 (no python-Levenshtein):
    #   venv/bin/python eval.py --model m && venv/bin/python eval.py --model m --e
    PYTHONPATH=src python benchmarks/eval/longbench_scorer_check.py compare /tmp/lb-official

`write` makes pred/m/<subset>.jsonl for all 21 v1 subsets and pred_e/m/<subset>.jsonl for the 13
LongBench-E subsets: random answers and predictions that hit each metric's cases (exact, partial,
empty, multi-line for the first-line rule, Chinese, classes, numbers, paragraphs, code with
comments and fences). `compare` scores each file with vist2's `eval score` and prints it beside
the official result.json; it exits 1 on any difference.
"""

import argparse
import contextlib
import io
import json
import os
import random
import sys

EN = "the a an of in on river paris france king john smith 1998 war city born film director album band".split()
ZH = "北京 上海 中国 的 是 在 会议 总结 我们 讨论 了 项目 进度 问题 ， 。 公司 发展 时间 年".split()
TREC = ["Abbreviation", "Entity", "Description", "Human", "Location", "Numeric value",
        "Expression abbreviated", "Animal", "Human being", "Individual", "City", "Country", "Date"]
LSHT = ["农业、农村", "军事", "体育", "财经", "经济", "科技", "教育", "文化", "社会", "国际", "法制", "军事武器"]
V1 = ["narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh", "hotpotqa", "2wikimqa", "musique",
      "dureader", "gov_report", "qmsum", "multi_news", "vcsum", "trec", "triviaqa", "samsum", "lsht",
      "passage_count", "passage_retrieval_en", "passage_retrieval_zh", "lcc", "repobench-p"]
E = ["qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa",
     "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p"]
rng = random.Random(8)


def en(n):
    return " ".join(rng.choice(EN) for _ in range(n))


def zh(n):
    return "".join(rng.choice(ZH) for _ in range(n))


def mutate(text, words):
    """The answer itself, empty, upper-cased, behind a blank line with a second line, padded, cut, or noise."""
    r = rng.random()
    if r < 0.15:
        return text
    if r < 0.25:
        return ""
    if r < 0.35:
        return text.upper() + "."
    if r < 0.5:
        return "\n\n" + text + "\nsecond line " + words(3)
    if r < 0.65:
        return words(rng.randint(1, 8)) + " " + text
    if r < 0.8:
        return text[: max(1, len(text) // 2)]
    return words(rng.randint(1, 12))


def line(dataset):
    """(pred, answers, all_classes) for one line of a subset."""
    if dataset in ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "triviaqa"):
        answers = [en(rng.randint(1, 5)) for _ in range(rng.randint(1, 3))]
        return mutate(rng.choice(answers), en), answers, None
    if dataset in ("multifieldqa_zh", "dureader", "vcsum"):
        answers = [zh(rng.randint(3, 40)) for _ in range(rng.randint(1, 2))]
        return mutate(rng.choice(answers), zh), answers, None
    if dataset in ("gov_report", "qmsum", "multi_news", "samsum"):
        answers = [". ".join(en(rng.randint(5, 25)) for _ in range(rng.randint(1, 4)))]
        pred = mutate(answers[0], en)
        return ("..." if rng.random() < 0.1 else pred), answers, None
    if dataset in ("trec", "lsht"):
        classes, joiner, label, query = (TREC, " and ", "Type: ", "\nQuestion: x") if dataset == "trec" else (LSHT, "和", "类别：", "\n新闻：x")
        gt = rng.choice(classes)
        pred = rng.choice([gt, gt + joiner + rng.choice(classes), rng.choice(classes), label + gt + query, "\n" + gt, "none"])
        return pred, [gt], classes
    if dataset == "passage_count":
        gt = rng.randint(1, 30)
        pred = rng.choice([str(gt), f"There are {gt} paragraphs", f"{gt}, {gt + 1}", "I don't know", f"{gt} or {gt}", "１２"])
        return pred, [gt], None
    if dataset == "passage_retrieval_en":
        k = rng.randint(1, 30)
        pred = rng.choice([f"Paragraph {k}", f"Paragraph {k + 1}", f"Paragraph {k}, Paragraph 3", "none", f"{k}"])
        return pred, [f"Paragraph {k}"], None
    if dataset == "passage_retrieval_zh":
        k = rng.randint(1, 30)
        pred = rng.choice([f"段落{k}", f"段落{k + 2}", f"段落{k}和段落1", "不知道", f"答案是段落{k}"])
        return pred, [f"段落{k}"], None
    gt = rng.choice(["    return self.x + 1", "x = foo(bar, baz)", "if (a == b) {", "for i in range(10):", "}"])
    pred = rng.choice([gt, "```python\n" + gt + "\n```", "# comment\n" + gt, "// c\n" + gt.replace("x", "y"),
                       "\n" + gt[:-2], "", "#only comments", gt + "\nmore code", "completely different line of text"])
    return pred, [gt], None  # lcc, repobench-p


def write(folder: str, seed: int, lines: int) -> None:
    rng.seed(seed)
    for sub, names in (("pred/m", V1), ("pred_e/m", E)):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        for name in names:
            with open(os.path.join(folder, sub, f"{name}.jsonl"), "w", encoding="utf-8") as handle:
                for _ in range(lines):
                    pred, answers, classes = line(name)
                    record = {"pred": pred, "answers": answers, "all_classes": classes, "length": rng.randint(100, 16000)}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def compare(folder: str) -> int:
    from vist2.eval import score

    differences = total = 0
    for sub, e in (("pred/m", False), ("pred_e/m", True)):
        official = json.load(open(os.path.join(folder, sub, "result.json"), encoding="utf-8"))
        for task, value in sorted(official.items()):
            out = io.StringIO()
            args = argparse.Namespace(benchmark="longbench", task=task, predictions=os.path.join(folder, sub, f"{task}.jsonl"), e=e)
            with contextlib.redirect_stdout(out):
                score.run(args)
            ours = json.loads(out.getvalue())["score"]
            total += 1
            differences += ours != value
            print(f"{'E ' if e else 'v1'} {task:22s} official={value} vist2={ours} {'same' if ours == value else 'DIFFERENT'}")
    print(f"{differences} of {total} subset scores differ")
    return int(differences > 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["write", "compare"])
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--lines", type=int, default=60)
    args = parser.parse_args()
    if args.action == "write":
        write(args.folder, args.seed, args.lines)
    else:
        sys.exit(compare(args.folder))
