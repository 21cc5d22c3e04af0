"""The report's target checks: met and missed, measured from the rows, on held-out rows only."""

import re

import pytest

from simulation.headline import BEGIN, END, embed, is_fedmeta, markdown, targets


def row(method, shots, acc, diff=0.0, low=0.0, high=0.0, sites="heldout"):
    return {
        "scenario": "s",
        "shots": shots,
        "method": method,
        "acc": acc,
        "acc_ci": 0.01,
        "auc": 0.9,
        "diff_vs_fedavg_ft": diff,
        "diff_ci_low": low,
        "diff_ci_high": high,
        "seeds": 3,
        "episodes": 600,
        "sites": sites,
    }


ROWS = [
    row("fedavg+finetune", 1, 0.50),
    row("maml", 1, 0.56, 0.06, 0.01, 0.11),  # 6 points, CI above zero: met at 1-shot
    row("protonet", 1, 0.52, 0.02, 0.00, 0.04),
    row("centralized-maml", 1, 0.57),
    row("centralized-protonet", 1, 0.55),  # protonet 3 points below its centralized version: missed
    row("local", 1, 0.40),
    row("fedavg+finetune", 5, 0.70),
    row("maml", 5, 0.715, 0.015, 0.005, 0.025),  # 1.5 points < 2: missed at 5-shot
    row("local", 5, 0.72),  # local ahead: missed
    row("maml", 1, 0.99, 0.49, 0.4, 0.5, sites="validation"),  # validation rows are never checked
    row("fedavg+finetune", 10, 0.80),
    row("maml", 10, 0.70, -0.10, -0.12, -0.08),  # 10 shots: the issue sets no target there
]


def test_each_target_is_met_or_missed_from_the_rows():
    checks = {(c["shots"], c["target"].split()[0] + c["target"].split()[-1]): c for c in targets(ROWS)}
    met = {key: c["met"] for key, c in checks.items()}
    assert met == {
        (1, "best0"): True,
        (1, "everyversion"): False,
        (1, "besttraining"): True,
        (5, "best0"): False,
        (5, "besttraining"): False,
    }
    assert checks[(1, "best0")]["measured"] == "maml: +6.0 points (+1.0 to +11.0)"
    assert checks[(1, "everyversion")]["measured"] == "maml -1.0, protonet -3.0"


def test_the_report_leads_with_the_misses():
    text = markdown(ROWS)
    assert text.startswith("### Targets: 2 of 5 met, 3 MISSED")
    assert text.count("**no**") == 3


def test_the_table_shows_each_training_seed():
    seeded = [{**ROWS[1], "seed_acc": [0.691, 0.622, 0.669]}, ROWS[0]]  # the second as written before seed_acc
    lines = markdown(seeded, with_targets=False).splitlines()
    assert "| 1 | maml | 56.0 ± 1.0 | 0.900 | +6.0 (+1.0 to +11.0) | 3 | 69.1 / 62.2 / 66.9 | 600 |" in lines
    assert "| 1 | fedavg+finetune | 50.0 ± 1.0 | 0.900 | reference | 3 | - | 600 |" in lines


def test_the_report_shows_each_site_alone_for_fedmeta_and_its_centralized_version():
    both = {"site_diff": {"site-a": [0.04, 0.01, 0.07], "site-b": [0.02, 0.005, 0.035]}}
    split = {"site_diff": {"site-a": [0.08, 0.06, 0.10], "site-b": [-0.03, -0.05, -0.01]}}
    rows = [
        ROWS[0],
        {**ROWS[1], **split},
        {**ROWS[3], **both},
        {**row("fedavg+linear-probe", 1, 0.49), **both},  # a baseline: not the claim's subject
    ]
    lines = markdown(rows, with_targets=False).splitlines()
    assert "| shots | method | site-a | site-b | ahead at every site |" in lines
    assert "| 1 | maml | +8.0 (+6.0 to +10.0) | -3.0 (-5.0 to -1.0) | no |" in lines
    assert "| 1 | centralized-maml | +4.0 (+1.0 to +7.0) | +2.0 (+0.5 to +3.5) | yes |" in lines
    assert not any(line.startswith("| 1 | fedavg+linear-probe | +") for line in lines)
    assert "Each site alone" not in markdown(ROWS, with_targets=False)  # rows written before site_diff


def test_the_results_page_tables_are_generated_from_the_rows_between_its_markers(tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# Results\n\nIntro.\n\n{BEGIN}\nold table typed by hand\n{END}\n\n## Stress test\n")
    embed(ROWS, doc, "docs/results/headline.json")
    text = doc.read_text()
    assert text.startswith("# Results\n\nIntro.\n\n") and text.endswith(f"{END}\n\n## Stress test\n")
    assert "old table" not in text and "### Targets: 2 of 5 met, 3 MISSED" in text
    assert "| 1 | maml | 99.0" not in text  # the validation row stays out of the reported tables
    once = text
    embed(ROWS, doc, "docs/results/headline.json")
    assert doc.read_text() == once  # regenerating changes nothing
    doc.write_text("# Results without markers\n")
    with pytest.raises(ValueError, match=re.escape(f"needs one {BEGIN} line")):
        embed(ROWS, doc, "x")


def test_a_protonet_fine_tuned_from_its_prototypes_counts_as_fedmeta():
    """`protonet+finetune` is a meta-model's row (its centralized twin is compared with it);
    fedavg+finetune and centralized rows are not FedMeta."""
    rows = [
        row("fedavg+finetune", 5, 0.70),
        row("protonet", 5, 0.69, -0.01, -0.02, 0.0),
        row("protonet+finetune", 5, 0.73, 0.03, 0.01, 0.05),
        row("centralized-protonet+finetune", 5, 0.76),
        row("local", 5, 0.72),
    ]
    checks = {c["target"].split()[0] + c["target"].split()[-1]: c for c in targets(rows)}
    assert checks["best0"]["met"] and checks["best0"]["measured"].startswith("protonet+finetune: +3.0")
    assert checks["everyversion"]["measured"] == "protonet+finetune -3.0" and not checks["everyversion"]["met"]
    assert checks["besttraining"]["measured"] == "protonet+finetune 73.0 vs local 72.0"


def test_a_fine_tuned_maml_family_model_counts_as_fedmeta():
    """`fomaml+finetune` (tune --finetune-meta) is FedMeta; its centralized twin and FedAvg's are not."""
    assert is_fedmeta("fomaml+finetune") and is_fedmeta("maml") and is_fedmeta("protonet+finetune")
    assert not is_fedmeta("centralized-fomaml+finetune") and not is_fedmeta("fedavg+finetune")
