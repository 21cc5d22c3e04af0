"""The benchmark protocol: byte-identical episodes for every method, paired differences against
a hand computation, tuning that never reads a held-out site, and every adapter on real models."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.algorithms import build_algorithm
from common.backbones import build_model
from common.config import EpisodeConfig, MetaConfig
from common.export import save_meta_model
from common.models import ModelConfig
from simulation import benchmark
from simulation.adapters import (
    FineTune,
    LinearProbe,
    Loaded,
    MetaLearned,
    Prototypes,
    Scratch,
    architecture_digest,
    model_digest,
)
from simulation.benchmark import Protocol, Scores, draw_episodes, headline_rows, score, tune

MODEL = ModelConfig(image_size=8, num_classes=3, width=4, depth=2, num_groups=2)


def fedmeta(*args: str) -> subprocess.CompletedProcess:
    """`fedmeta benchmark ARGS` in a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "fedmeta", "benchmark", *args], capture_output=True, text=True, timeout=600
    )


def saved(tmp_path: Path, algorithm: str, num_classes: int = 3, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = MODEL if num_classes == 3 else ModelConfig(**{**MODEL.__dict__, "num_classes": num_classes})
    algo = build_algorithm(build_model(config), MetaConfig(algorithm, eval_inner_steps=2))
    return save_meta_model(
        tmp_path / f"{algorithm}-{num_classes}", algo.init_meta_params(), config, algo.config, EpisodeConfig(ways=3)
    )


def test_every_method_meets_byte_identical_episodes(scenario, tmp_path):
    protocol = Protocol(scenario, shots=(1, 2), queries=3, episodes=6)
    first, again = draw_episodes(protocol), draw_episodes(protocol)
    assert first.digests == again.digests and set(first.digests[1]) == {"new-0", "new-1"}
    assert first.digests[1] != first.digests[2]  # K has its own stream
    adapters = [
        MetaLearned(saved(tmp_path, "maml")),
        FineTune(saved(tmp_path, "fedavg"), steps=2),
        Scratch(MODEL, steps=2),
    ]
    scored = [score(a, first) for a in adapters]
    assert all(s.digests == first.digests for s in scored)  # every method: the same bytes
    assert all(len(s.acc[1]) == 6 and np.all((s.acc[1] >= 0) & (s.acc[1] <= 1)) for s in scored)


class Stopped(Exception):
    """Stands for the session ending (or a SIGKILL) in the middle of a scoring."""


class StopsAfter(FineTune):
    """Fine-tuning that counts the episodes it adapts to and stops after `limit` of them."""

    def __init__(self, *args, limit: int = 10**9, **kwargs):
        super().__init__(*args, **kwargs)
        self.limit, self.adapted = limit, 0

    def logits_at(self, episode, num_classes, steps):
        if self.adapted == self.limit:
            raise Stopped
        self.adapted += 1
        return super().logits_at(episode, num_classes, steps)


def test_a_stopped_scoring_goes_on_from_its_last_kept_episode(scenario, tmp_path, monkeypatch):
    """Stopped midway, a scoring keeps the episodes it finished; the next run adapts to the rest
    only and gives exactly the scores of an unbroken run. Another adapter's or other episodes'
    progress is not taken up."""
    from simulation import progress

    monkeypatch.setattr(progress, "SAVE_EVERY", 0.0)  # write after every episode, not every minute
    model = saved(tmp_path, "fedavg")
    episodes = draw_episodes(Protocol(scenario, shots=(1, 2), queries=3, episodes=6))  # 3 per site
    whole = score(StopsAfter(model, steps=2), episodes)
    keep = tmp_path / "scores.progress.json"
    with pytest.raises(Stopped):  # the second site's 1-shot episodes: one done
        score(StopsAfter(model, steps=2, limit=4), episodes, keep=keep)
    written = json.loads(keep.read_text())  # what `fedmeta benchmark status` reads: the run's size and start
    assert written["planned"] == {"1": 6, "2": 6} and written["run"]["kept"] == 0
    with pytest.raises(Stopped):  # resumed and stopped again after one more episode
        score(StopsAfter(model, steps=2, limit=1), episodes, keep=keep)
    assert json.loads(keep.read_text())["run"]["kept"] == 4  # its pace counts its own episodes only
    again = StopsAfter(model, steps=2)
    resumed = score(again, episodes, keep=keep)
    assert again.adapted == 12 - 5
    for field in ("acc", "auc", "confusion"):
        for shots in (1, 2):
            assert np.array_equal(getattr(resumed, field)[shots], getattr(whole, field)[shots]), (field, shots)
    assert resumed.digests == whole.digests
    # another setting (its identity differs): nothing taken up
    other = StopsAfter(model, steps=3)
    score(other, episodes, keep=keep)
    assert other.adapted == 12
    # other episodes of the same adapter: the file's parts are for other bytes
    fewer = draw_episodes(Protocol(scenario, shots=(1, 2), queries=3, episodes=6, eval_seed=1))
    same = StopsAfter(model, steps=3)
    score(same, fewer, keep=keep)
    assert same.adapted == 12


def test_a_finished_table_scored_at_more_shots_adapts_to_the_new_shots_only(scenario, tmp_path):
    """A method-seed finished at 1 and 2 shots, scored again at 1, 2 and 3: only the 3-shot
    episodes are adapted to, and the scores equal a scoring of all three from nothing. Another
    adapter's finished scores are not taken."""
    from simulation.benchmark import score_methods

    model = saved(tmp_path, "fedavg")
    directory = tmp_path / "scores"
    directory.mkdir()
    before = draw_episodes(Protocol(scenario, shots=(1, 2), queries=3, episodes=4))
    more = draw_episodes(Protocol(scenario, shots=(1, 2, 3), queries=3, episodes=4))
    assert all(more.digests[k] == before.digests[k] for k in (1, 2))  # each shots' own stream
    first = StopsAfter(model, steps=2)
    score_methods({"fedavg+finetune": [first]}, before, directory)
    assert first.adapted == 8
    said: list[str] = []
    again = StopsAfter(model, steps=2)
    extended = score_methods({"fedavg+finetune": [again]}, more, directory, say=said.append)["fedavg+finetune"][0]
    assert again.adapted == 4  # the 3-shot episodes, two sites of two
    assert any("8 episodes kept from" in line for line in said)
    whole = score(StopsAfter(model, steps=2, name="fedavg+finetune"), more)
    for field in ("acc", "auc", "confusion"):
        for shots in (1, 2, 3):
            assert np.array_equal(getattr(extended, field)[shots], getattr(whole, field)[shots]), (field, shots)
    assert set(extended.site_confusion[1]) == {"new-0", "new-1"}
    assert not list(directory.glob("*.progress.json"))
    # fewer shots would write over the 3-shot scores: refused, naming the shots that keep them
    with pytest.raises(ValueError, match=r"holds 3-shot scores .* --shots 1,2,3"):
        score_methods({"fedavg+finetune": [StopsAfter(model, steps=2)]}, before, directory)
    assert set(json.loads((directory / "fedavg+finetune-0.json").read_text())["acc"]) == {"1", "2", "3"}
    # another setting finds the same file: nothing of it is kept
    other = StopsAfter(model, steps=3)
    score_methods({"fedavg+finetune": [other]}, more, directory)
    assert other.adapted == 12


def test_status_lists_what_the_runs_were_asked_to_score_that_no_process_has_started(scenario, tmp_path):
    """Each `evaluate` run adds its method-seeds to the directory's plan; `status` lists a planned
    method-seed with no file yet, and one scored at fewer shots than asked, as still to score."""
    from simulation.benchmark import planned, score_methods
    from simulation.progress import Plan
    from simulation.scoring_status import SCORED, TO_SCORE, as_text, method_seeds

    model = saved(tmp_path, "fedavg")
    directory = tmp_path / "scores"
    directory.mkdir()
    before = draw_episodes(Protocol(scenario, shots=(1, 2), queries=3, episodes=4))
    more = draw_episodes(Protocol(scenario, shots=(1, 2, 3), queries=3, episodes=4))
    score_methods({"fedavg+finetune": [StopsAfter(model, steps=2)]}, before, directory)
    assert Plan(directory).read() == (["fedavg+finetune-0"], {1: 4, 2: 4})
    (row,) = method_seeds(directory)
    assert row.state == SCORED
    # a run asked for 3 shots too and for the prototypes, stopped before scoring anything
    Plan(directory).add(["fedavg+finetune-0", "fedavg+prototypes-0"], planned(more))
    rows = {r.method: r for r in method_seeds(directory)}
    assert rows["fedavg+finetune"].state == TO_SCORE and rows["fedavg+finetune"].episodes == {1: 4, 2: 4}
    assert rows["fedavg+prototypes"].state == TO_SCORE and rows["fedavg+prototypes"].episodes == {}
    text = as_text(list(rows.values()))
    assert "0 of 2 method-seeds scored, 0 being scored, 0 stopped midway, 2 to score" in text
    assert next(line for line in text.splitlines() if line.startswith("fedavg+finetune ")).split()[4:7] == [
        "4/4",
        "4/4",
        "0/4",
    ]
    # a run on the same episodes adds to the plan; the finetuning is then scored at 3 shots too
    score_methods({"fedavg+finetune": [StopsAfter(model, steps=2)]}, more, directory)
    assert Plan(directory).read() == (["fedavg+finetune-0", "fedavg+prototypes-0"], {1: 4, 2: 4, 3: 4})
    rows = {r.method: r for r in method_seeds(directory)}
    assert rows["fedavg+finetune"].state == SCORED and rows["fedavg+prototypes"].state == TO_SCORE
    # a run on other episodes replaces the plan
    Plan(directory).add(["fedavg+finetune-0"], {1: 2})
    assert [r.method for r in method_seeds(directory)] == ["fedavg+finetune"]


def test_a_table_another_device_finished_is_extended_here_and_says_which_device_made_each_shots(
    scenario, tmp_path, monkeypatch
):
    """A table a GPU finished at 1 and 2 shots (its identity names cuda), scored on the CPU at 1,
    2 and 3 with cuda accepted: only the 3-shot episodes are adapted to, and the scores say the GPU
    made 1 and 2 shots and the CPU 3, also after a run stopped midway, in the kept file and in the
    table's note. Without accepting cuda nothing of the GPU's file is kept."""
    import shutil

    from simulation import progress
    from simulation.benchmark import headline_rows, identity_on, score_methods, write_scores
    from simulation.headline import markdown

    monkeypatch.setattr(progress, "SAVE_EVERY", 0.0)
    model = saved(tmp_path, "fedavg")
    before = draw_episodes(Protocol(scenario, shots=(1, 2), queries=3, episodes=4))
    more = draw_episodes(Protocol(scenario, shots=(1, 2, 3), queries=3, episodes=4))
    gpu = tmp_path / "gpu"
    gpu.mkdir()
    made = score(StopsAfter(model, steps=2, name="fedavg+finetune"), before)
    made.made_on = {k: dict.fromkeys(by_site, "cuda") for k, by_site in made.made_on.items()}  # as a GPU's run
    write_scores(gpu / "fedavg+finetune-0.json", made, identity_on(StopsAfter(model, steps=2).identity(), "cuda"))
    plain = tmp_path / "plain"
    shutil.copytree(gpu, plain)
    alone = StopsAfter(model, steps=2)
    score_methods({"fedavg+finetune": [alone]}, more, plain)
    assert alone.adapted == 12  # the GPU's scores are not this (CPU) adapter's unless accepted

    with pytest.raises(Stopped):  # the GPU's 1- and 2-shot parts taken, one 3-shot episode adapted
        score_methods({"fedavg+finetune": [StopsAfter(model, steps=2, limit=1)]}, more, gpu, accept=("cuda",))
    said: list[str] = []
    rest = StopsAfter(model, steps=2)
    extended = score_methods({"fedavg+finetune": [rest]}, more, gpu, say=said.append, accept=("cuda",))
    assert rest.adapted == 3
    devices = {k: set(v.values()) for k, v in extended["fedavg+finetune"][0].made_on.items()}
    assert devices == {1: {"cuda"}, 2: {"cuda"}, 3: {"cpu"}}
    assert any("scored on cpu at 3 shots; cuda at 1, 2 shots" in line for line in said), said
    written = json.loads((gpu / "fedavg+finetune-0.json").read_text())
    assert "device" not in written["identity"] and written["made_on"]["1"] == {"new-0": "cuda", "new-1": "cuda"}
    assert np.array_equal(extended["fedavg+finetune"][0].acc[2], made.acc[2])
    said.clear()
    kept = score_methods({"fedavg+finetune": [StopsAfter(model, steps=2)]}, more, gpu, say=said.append)
    assert any("kept from" in line and "(scored on cpu at 3 shots; cuda at 1, 2 shots)" in line for line in said)
    rows = headline_rows("s", kept)
    assert [r["made_on"] for r in rows] == ["cuda", "cuda", "cpu"]
    assert "Scored elsewhere than on the CPU: 1-shot rows on cuda; 2-shot rows on cuda" in markdown(rows, False)
    assert "Scored elsewhere" not in markdown([{**r, "made_on": "cpu"} for r in rows], False)


def test_a_claim_is_held_by_a_live_process_and_taken_over_when_it_is_gone(tmp_path, claimant):
    import json

    from simulation.progress import Claim

    path = tmp_path / "fedavg+finetune-0.claim"
    other = claimant(path)
    claim = Claim(path)
    assert not claim.take() and claim.holder() == f"pid {other.pid} on this machine"
    claim.release()  # never removes another process's claim
    assert path.is_file()
    other.kill()
    other.wait()
    assert claim.holder() is None and claim.take()  # stale: taken over
    assert json.loads(path.read_text())["pid"] != other.pid
    claim.release()
    assert not path.exists()
    path.write_text(json.dumps({"pid": 1, "host": "another-machine"}))  # cannot be checked from here
    assert not Claim(path).take() and "remove" in str(Claim(path).holder())


@pytest.mark.parametrize("other_finishes", [True, False])
def test_a_method_seed_another_process_is_scoring_is_left_to_it(
    scenario, tmp_path, monkeypatch, claimant, other_finishes
):
    """Two evaluations sharing a scores directory: the one that finds a method-seed claimed scores
    the rest first and then takes the other's scores once written (it does not score them again),
    or scores it itself if the other process stopped without them."""
    from simulation.benchmark import score_methods, write_scores

    monkeypatch.setattr(benchmark, "WAIT", 0.05)
    model = saved(tmp_path, "fedavg")
    episodes = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=4))
    directory = tmp_path / "scores"
    adapters = {"first": [StopsAfter(model, steps=1)], "second": [StopsAfter(model, steps=2)]}
    theirs = score(StopsAfter(model, steps=1, name="first"), episodes)  # what the other process writes
    directory.mkdir()
    holder = claimant(directory / "first-0.claim")
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        if "being scored by" in line:  # the other process ends now, with or without its scores
            if other_finishes:  # writes its scores, then releases its claim
                write_scores(directory / "first-0.json", theirs, adapters["first"][0].identity())
                (directory / "first-0.claim").unlink()
            holder.kill()
            holder.wait()

    methods = score_methods(adapters, episodes, directory, say=say)
    waited = next(i for i, line in enumerate(said) if "being scored by" in line)
    second_done = next(i for i, line in enumerate(said) if line.startswith("second:") and "done" in line)
    assert waited < second_done  # the rest was scored while the claim was held
    assert np.array_equal(methods["first"][0].acc[2], theirs.acc[2])
    assert adapters["first"][0].adapted == (0 if other_finishes else 4)
    assert adapters["second"][0].adapted == 4
    assert not list(directory.glob("*.claim")) and not list(directory.glob("*.progress.json"))


def test_headline_rows_are_paired_differences_over_seeds(tmp_path):
    digests = {1: {"a": "x"}}
    ref = [Scores("fedavg+finetune", {1: np.array([0.5, 0.5, 0.5, 0.7, 0.3])}, {1: np.ones(5)}, digests)]
    # two seeds of a method: per-episode means 0.6, 0.7, 0.5, 0.8, 0.4 -> differences 0.1, 0.2, 0, 0.1, 0.1
    maml = [
        Scores("maml", {1: np.array([0.5, 0.8, 0.4, 0.8, 0.3])}, {1: np.ones(5)}, digests),
        Scores("maml", {1: np.array([0.7, 0.6, 0.6, 0.8, 0.5])}, {1: np.ones(5)}, digests),
    ]
    rows = {r["method"]: r for r in headline_rows("tiny", {"fedavg+finetune": ref, "maml": maml})}
    row = rows["maml"]
    assert row["acc"] == pytest.approx(0.6) and row["seeds"] == 2 and row["episodes"] == 5
    assert row["seed_acc"] == pytest.approx([0.56, 0.64])  # each seed's own mean, in the order given
    half = 2.776445 * 0.0707107 / math.sqrt(5)
    assert row["diff_vs_fedavg_ft"] == pytest.approx(0.1)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((0.1 - half, 0.1 + half), rel=1e-5)
    assert rows["fedavg+finetune"]["diff_vs_fedavg_ft"] == 0
    other = [Scores("maml", {1: np.zeros(5)}, {1: np.ones(5)}, {1: {"a": "y"}})]
    with pytest.raises(ValueError, match="different 1-shot episodes"):
        headline_rows("tiny", {"fedavg+finetune": ref, "maml": other})


def test_headline_rows_keep_each_sites_own_paired_difference():
    # 3 episodes at each of two sites, kept site after site in name order: the method wins every
    # episode at site a by 0.2 and loses 0.1, 0.2, 0.3 at site b, so the pooled lead hides a loss
    digests = {1: {"b": "y", "a": "x"}}
    ref = [Scores("fedavg+finetune", {1: np.full(6, 0.5)}, {1: np.ones(6)}, digests)]
    maml = [Scores("maml", {1: np.array([0.7, 0.7, 0.7, 0.4, 0.3, 0.2])}, {1: np.ones(6)}, digests)]
    rows = {r["method"]: r for r in headline_rows("tiny", {"fedavg+finetune": ref, "maml": maml})}
    a, b = rows["maml"]["site_diff"]["a"], rows["maml"]["site_diff"]["b"]
    assert a == pytest.approx([0.2, 0.2, 0.2])  # no spread: a zero-width interval
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert b == pytest.approx([-0.2, -0.2 - half, -0.2 + half], rel=1e-5)
    assert "site_diff" not in rows["fedavg+finetune"]  # the reference against itself says nothing


def test_tuning_reads_the_validation_sites_only(scenario, tmp_path, monkeypatch):
    read = []
    real = benchmark.load_site

    def spy(sc, index, *args, **kwargs):
        read.append(sc.sites[index].role)
        return real(sc, index, *args, **kwargs)

    monkeypatch.setattr(benchmark, "load_site", spy)
    model = saved(tmp_path, "fedavg")
    best, table = tune(
        lambda steps: FineTune(model, steps=steps),
        {"steps": [0, 3]},
        Protocol(scenario, shots=(2,), queries=3, episodes=4, role="validation"),
    )
    assert set(read) == {"validation"} and len(table) == 2 and best["steps"] in (0, 3)
    with pytest.raises(ValueError, match="chosen on the validation sites"):
        tune(lambda steps: FineTune(model, steps=steps), {"steps": [1]}, Protocol(scenario, role="heldout"))


def test_a_stopped_tuning_goes_on_from_its_last_kept_episode(scenario, tmp_path, monkeypatch):
    """Each grid point keeps its episodes in the keep directory: a rerun adapts to the rest only
    and chooses from the same table as an unbroken tuning."""
    from simulation import progress

    monkeypatch.setattr(progress, "SAVE_EVERY", 0.0)
    model = saved(tmp_path, "fedavg")
    protocol = Protocol(scenario, shots=(2,), queries=3, episodes=4, role="validation")
    grid = {"steps": [0, 2], "lr": [1e-3, 1e-2]}  # two trajectories over 4 episodes each
    made: list[StopsAfter] = []

    def factory(*limits):  # per grid point in turn: how many episodes its adapter gets through
        def make(**point):
            made.append(StopsAfter(model, limit=limits[len(made)] if limits else 10**9, **point))
            return made[-1]

        return make

    whole = tune(factory(), grid, protocol)
    made.clear()
    with pytest.raises(Stopped):  # the second rate's trajectory: one episode done
        tune(factory(10**9, 1), grid, protocol, keep=tmp_path / "kept")
    made.clear()
    assert tune(factory(), grid, protocol, keep=tmp_path / "kept") == whole
    assert [a.adapted for a in made] == [0, 3]


def test_adapters_for_a_supervised_model_handle_new_and_absent_classes(scenario, tmp_path):
    """A 5-class supervised model meets 3-way episodes (new classes: a head from class means),
    and a linear probe or prototypes never predict a class the support set does not hold."""
    episodes = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=2))
    episode = next(iter(episodes.batches[2].values()))[0]
    model = saved(tmp_path, "fedavg", num_classes=5)
    for adapter in (FineTune(model, steps=3), LinearProbe(model, steps=5), Prototypes(model)):
        logits = adapter.logits(episode, 3)
        assert logits.shape == (len(episode.query_y), 3) and torch.isfinite(logits).all()
    partial = episode.support_y != 2  # the support holds classes 0 and 1 only
    from common.tasks import Episode

    two = Episode(
        episode.support_x[partial], episode.support_y[partial], episode.query_x, episode.query_y, episode.classes
    )
    for adapter in (LinearProbe(model, steps=5), Prototypes(model)):
        assert set(adapter.logits(two, 3).argmax(1).tolist()) <= {0, 1}


def test_a_protonet_fine_tunes_from_its_prototypes(scenario, tmp_path):
    """`protonet+finetune` starts where the ProtoNet predicts (its never-trained head replaced by
    the support's prototypes), then moves; without `head_from_prototypes` a head of the episode's
    size is kept as it is. The flag is part of the score identity; FedAvg's identity is unchanged."""
    episode = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=1, role="validation")).batches[2]
    episode = next(iter(episode.values()))[0]
    model_dir = saved(tmp_path, "protonet")
    predicted = MetaLearned(model_dir).logits(episode, 3)
    tuned = FineTune(model_dir, steps=3, lr=1e-2, head_from_prototypes=True, name="protonet+finetune")
    at = tuned.logits_at(episode, 3, [0, 3])
    assert torch.allclose(at[0], predicted, rtol=1e-4, atol=1e-4) and not torch.allclose(at[3], at[0])
    assert not torch.allclose(FineTune(model_dir, steps=0).logits(episode, 3), predicted, rtol=1e-4, atol=1e-4)
    plain = FineTune(model_dir, steps=3, lr=1e-2).identity()
    assert "head_from_prototypes" not in plain and tuned.identity() == {**plain, "head_from_prototypes": True}


def test_fine_tuning_scores_a_large_query_set_in_chunks_as_in_one(tmp_path, monkeypatch):
    """A site's whole test set (`fedmeta adapt --against`) is scored 256 images at a time after the
    fit; the logits are those of one batch, to float rounding."""
    import simulation.adapters as adapters
    from common.tasks import Episode

    generator = torch.Generator().manual_seed(0)
    support_x, query_x = torch.rand(6, 1, 8, 8, generator=generator), torch.rand(300, 1, 8, 8, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    episode = Episode(support_x, labels, query_x, torch.zeros(300, dtype=torch.long), torch.arange(3))
    model_dir = saved(tmp_path, "fomaml")
    chunked = FineTune(model_dir, steps=3, lr=1e-2).logits(episode, 3)
    monkeypatch.setattr(adapters, "QUERY_CHUNK", 1000)
    whole = FineTune(model_dir, steps=3, lr=1e-2).logits(episode, 3)
    assert chunked.shape == (300, 3) and torch.allclose(chunked, whole, rtol=1e-5, atol=1e-5)


SMALL = ("--shots", "2", "--queries", "3", "--episodes", "2")


def cli_fine_tuned(scenario: str, tmp_path: Path, algorithm: str, *tune_args: str) -> tuple[list, dict, Path, str]:
    """A FedAvg model and a meta-model ALGORITHM saved, then `tune --no-local *tune_args` in a real
    subprocess into TMP_PATH/tuned.json: the arguments both commands share, the settings chosen,
    the meta-model's directory and tune's output."""
    import json

    supervised, meta_model = saved(tmp_path / "s", "fedavg"), saved(tmp_path, algorithm)
    common = ["--scenario", scenario, "--supervised", str(supervised), "--model", f"{algorithm}={meta_model}"]
    tuned_file = tmp_path / "tuned.json"
    # --no-local: a sweep that does not score local training does not tune it either
    tuned = fedmeta("tune", *common, *SMALL, "--no-local", *tune_args, "--out", str(tuned_file))
    assert tuned.returncode == 0, tuned.stderr
    return common, json.loads(tuned_file.read_text()), meta_model, " ".join(tuned.stdout.split())


def cli_scored_fine_tuned(common: list, settings: dict, tuned_file: Path, name: str) -> tuple[dict, dict]:
    """`evaluate --no-local` with NAME+finetune's best set to 2 steps (the test's time, whatever was
    chosen): the headline rows by method and the kept identity of NAME+finetune's scores."""
    import json

    settings[f"{name}+finetune"]["best"] = {"steps": 2, "lr": 1e-3}
    tuned_file.write_text(json.dumps(settings))
    out = tuned_file.parent / "results"
    done = fedmeta("evaluate", *common, *SMALL, "--no-local", "--tuned", str(tuned_file), "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = {r["method"]: r for r in json.loads((out / "headline.json").read_text())}
    kept = json.loads((out / "scores" / "tiny-roles" / "heldout" / f"{name}+finetune-0.json").read_text())
    return rows, kept["identity"]


def test_the_cli_tunes_and_scores_a_protonet_fine_tuned_from_its_prototypes(scenario, tmp_path):
    """`tune --model protonet=DIR` chooses fine-tuning's steps and rate for the ProtoNet on the
    validation sites (recording its model); `evaluate` then scores `protonet+finetune` beside it."""
    common, settings, protonet, stdout = cli_fine_tuned(scenario, tmp_path, "protonet")
    tuned_file = tmp_path / "tuned.json"
    assert "tuning protonet+finetune" in stdout
    entry = settings["protonet+finetune"]
    assert entry["model"] == model_digest(protonet) and len(entry["tries"]) == 20  # fine-tuning's grid
    assert "protonet" not in settings  # prototypes themselves take no setting
    assert "local" not in settings and {"finetune", "linear-probe"} <= set(settings)
    out = tmp_path / "results"
    refused = fedmeta("evaluate", *common, *SMALL, "--tuned", str(tuned_file), "--out", str(out))  # local wanted
    assert refused.returncode != 0 and not out.exists()
    assert "holds no settings for local: tune them" in " ".join(refused.stderr.split())
    rows, kept = cli_scored_fine_tuned(common, settings, tuned_file, "protonet")
    assert {"protonet", "protonet+finetune", "fedavg+finetune"} <= set(rows)
    assert kept["head_from_prototypes"] is True and kept["steps"] == 2


def test_a_maml_model_fine_tunes_from_its_own_weights(scenario, tmp_path):
    """`fomaml+finetune` starts where the meta-model does before its inner loop (its own head fits
    the episode's classes), then moves as FedAvg + fine-tune does; no prototype head is put in."""
    episode = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=1, role="validation")).batches[2]
    episode = next(iter(episode.values()))[0]
    model_dir = saved(tmp_path, "fomaml")
    unadapted = MetaLearned(model_dir, steps=0).logits(episode, 3)
    tuned = FineTune(model_dir, steps=3, lr=1e-2, name="fomaml+finetune")
    at = tuned.logits_at(episode, 3, [0, 3])
    assert torch.allclose(at[0], unadapted, rtol=1e-4, atol=1e-4) and not torch.allclose(at[3], at[0])
    assert "head_from_prototypes" not in tuned.identity()


def test_the_cli_tunes_and_scores_a_maml_model_fine_tuned_when_asked(scenario, tmp_path):
    """`tune --finetune-meta` also chooses fine-tuning's steps and rate for a meta-model that adapts
    by steps (recording its model), beside its own inner loop's; `evaluate` scores both rows."""
    common, settings, fomaml, _ = cli_fine_tuned(scenario, tmp_path, "fomaml", "--finetune-meta")
    tuned_file = tmp_path / "tuned.json"
    entry = settings["fomaml+finetune"]
    assert entry["model"] == model_digest(fomaml) and len(entry["tries"]) == 20  # fine-tuning's grid
    assert len(settings["fomaml"]["tries"]) == 24  # its own inner loop, tuned as before
    rows, kept = cli_scored_fine_tuned(common, settings, tuned_file, "fomaml")
    assert {"fomaml", "fomaml+finetune", "fedavg+finetune"} <= set(rows)
    assert kept["model"] == model_digest(fomaml) and kept["steps"] == 2
    assert "head_from_prototypes" not in kept


def test_the_cli_tunes_on_validation_then_writes_the_headline(scenario, tmp_path):
    """`fedmeta benchmark tune` then `evaluate` in real subprocesses: every method's row, the
    paired differences, the plots, and headline.json rows in the shape the docs are built from."""
    import json

    supervised = [saved(tmp_path / f"s{seed}", "fedavg") for seed in (0, 1)]
    maml = saved(tmp_path, "maml")

    tuned = fedmeta(
        "tune",
        "--scenario",
        scenario,
        "--supervised",
        str(supervised[0]),
        "--shots",
        "2",
        "--queries",
        "3",
        "--episodes",
        "2",
        "--out",
        str(tmp_path / "tuned.json"),
    )
    assert tuned.returncode == 0, tuned.stderr
    settings = json.loads((tmp_path / "tuned.json").read_text())
    assert set(settings) >= {"finetune", "linear-probe", "local"} and settings["protocol"]["role"] == "validation"
    # the meta-model's evaluation steps are tuned the same way, added to what tuned.json holds
    tune_args = ("--scenario", scenario, "--supervised", str(supervised[0]), "--shots", "2", "--queries", "3")
    out_args = ("--out", str(tmp_path / "tuned.json"))
    with_meta = fedmeta("tune", *tune_args, "--episodes", "2", "--model", f"maml={maml}", *out_args)
    assert with_meta.returncode == 0, with_meta.stderr
    assert with_meta.stdout.count("kept from") == 3 and "tuning maml" in with_meta.stdout
    tuned_meta = json.loads((tmp_path / "tuned.json").read_text())
    assert {k: tuned_meta[k] for k in settings} == settings  # the baselines' choice untouched
    best = tuned_meta["maml"]["best"]  # its steps and the fraction of its own inner rate
    assert best["steps"] in (0, 1, 2, 5, 10, 20, 40, 80) and best["lr_scale"] in (0.1, 0.3, 1.0)
    assert len(tuned_meta["maml"]["tries"]) == 24
    assert "maml+finetune" not in tuned_meta  # fine-tuning a MAML-family model is asked for (--finetune-meta)
    table = (tmp_path / "tuned.md").read_text()  # every try, readable, the choice in bold
    assert table.count("| maml |") == 24 and table.count("| maml | **lr_scale") == 1
    # all kept: nothing tuned again, and no validation episodes drawn for nothing
    kept = fedmeta("tune", *tune_args, "--episodes", "2", "--model", f"maml={maml}", *out_args)
    said = " ".join(kept.stdout.split())  # the console wraps long lines
    assert kept.returncode == 0 and "no validation episodes drawn" in said and "tuning " not in said
    assert json.loads((tmp_path / "tuned.json").read_text()) == tuned_meta
    # a method's model trained again (another model under the same name): its settings are tuned
    # again, the baselines' (the same supervised model) kept
    assert tuned_meta["maml"]["model"] == model_digest(maml)
    assert tuned_meta["finetune"]["model"] == model_digest(supervised[0])
    other_model = saved(tmp_path, "fomaml")
    again = fedmeta("tune", *tune_args, "--episodes", "2", "--model", f"maml={other_model}", *out_args)
    said = " ".join(again.stdout.split())
    assert again.returncode == 0 and "maml: tuned again" in said and "tuning maml" in said
    assert said.count("kept from") == 3
    tuned_meta = json.loads((tmp_path / "tuned.json").read_text())
    assert tuned_meta["maml"]["model"] == model_digest(other_model)
    assert {k: tuned_meta[k] for k in settings} == settings
    # another supervised model of the same shape (e.g. FedAvg trained for fewer rounds): its
    # fine-tuning and linear probe are tuned again; local training, which starts from no weights, is kept
    assert tuned_meta["local"]["model"] == architecture_digest(Loaded.from_dir(supervised[0]).model.config)
    reseeded = saved(tmp_path / "reseeded", "fedavg", seed=1)
    swap = ("--scenario", scenario, "--supervised", str(reseeded), "--shots", "2", "--queries", "3")
    swap_out = tmp_path / "swap" / "tuned.json"
    swap_out.parent.mkdir()
    swap_out.write_text((tmp_path / "tuned.json").read_text())
    swapped = fedmeta("tune", *swap, "--episodes", "2", "--out", str(swap_out))
    said = " ".join(swapped.stdout.split())
    assert swapped.returncode == 0, swapped.stderr
    assert "finetune: tuned again" in said and "linear-probe: tuned again" in said and "local: kept from" in said
    retuned = json.loads(swap_out.read_text())
    assert retuned["finetune"]["model"] == model_digest(reseeded) and retuned["local"] == tuned_meta["local"]
    other = fedmeta("tune", *tune_args, "--episodes", "3", *out_args)  # another protocol: not mixed in
    assert other.returncode == 2 and "--retune" in other.stderr
    # evaluate's time is the steps tuned.json holds (up to 200 on this grid): 2 steps exercise the same
    # code, and the test reads what tuned.json says, whatever it says
    settings = tuned_meta
    for name in ("finetune", "linear-probe", "local", "maml"):
        settings[name]["best"]["steps"] = 2
    (tmp_path / "tuned.json").write_text(json.dumps(settings))
    out = tmp_path / "results"
    evaluate_args = (
        "evaluate",
        "--scenario",
        scenario,
        "--model",
        f"maml={maml}",
        "--supervised",
        str(supervised[0]),
        "--supervised",
        str(supervised[1]),
        "--tuned",
        str(tmp_path / "tuned.json"),
        "--shots",
        "1,2",
        "--queries",
        "3",
        "--episodes",
        "4",
        "--out",
        str(out),
    )
    done = fedmeta(*evaluate_args)
    assert done.returncode == 0, done.stderr
    rows = json.loads((out / "headline.json").read_text())
    keys = {
        "scenario",
        "shots",
        "method",
        "acc",
        "acc_ci",
        "diff_vs_fedavg_ft",
        "diff_ci_low",
        "diff_ci_high",
        "seeds",
        "episodes",
    }
    assert all(keys <= set(r) for r in rows) and len(rows) == 2 * 5
    assert {r["method"] for r in rows} == {
        "maml",
        "fedavg+finetune",
        "fedavg+linear-probe",
        "fedavg+prototypes",
        "local",
    }
    assert all(r["episodes"] == 4 for r in rows) and {r["seeds"] for r in rows} == {1, 2}
    assert {r["seeds"] for r in rows if r["method"] in ("maml", "local")} == {1}  # one local initialization
    for name in ("tiny-roles-by-shots.png", "tiny-roles-forest.png", "headline.md"):
        assert (out / name).stat().st_size > 0
    per_class = (out / "per-class-tiny-roles-heldout.md").read_text()
    assert "| class | queries | maml | fedavg+finetune |" in per_class and "mistake 1" in per_class
    case_mix = json.loads((out / "case-mix-tiny-roles-heldout.json").read_text())
    assert {r["method"] for r in case_mix} == {r["method"] for r in rows}  # every method, at each site
    assert all(
        0 <= r["case_mix"] <= 1 and ("diff_case_mix" in r) == (r["method"] != "fedavg+finetune") for r in case_mix
    )
    table = (out / "headline.md").read_text()
    assert table.count("| fedavg+finetune |") == 2 and all(
        line.split("|")[5].strip() == "reference" for line in table.splitlines() if "| fedavg+finetune |" in line
    )
    # run again, it keeps every method-seed's scores (same adapter, model and episodes) ...
    again = fedmeta(*evaluate_args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("kept from") == 8 and json.loads((out / "headline.json").read_text()) == rows
    # ... but not those of an adapter whose settings changed: fine-tuning at another rate scores again
    settings["finetune"]["best"] = {**settings["finetune"]["best"], "lr": 0.123}
    (tmp_path / "tuned.json").write_text(json.dumps(settings))
    # ... and a method-seed stopped midway goes on from the episodes its progress file kept: one is
    # planted for seed 0's first site at 1 shot (AUROC 0.123 marks it), as a stopped run leaves it
    from common.scenario import load_scenario
    from simulation.progress import Part, Progress

    scores_dir = out / "scores" / load_scenario(scenario).name / "heldout"
    assert not list(scores_dir.glob("*.progress.json")) and not (tmp_path / "tuned.progress").exists()
    drawn = draw_episodes(Protocol(scenario, shots=(1, 2), queries=3, episodes=4))
    site, labels = sorted(drawn.batches[1])[0], drawn.num_labels()
    planted = Progress(
        scores_dir / "fedavg+finetune-0.progress.json",
        FineTune(supervised[0], **settings["finetune"]["best"]).identity(),
    )
    planted.update(1, site, drawn.digests[1][site], {0: Part([1.0, 1.0], [0.123, 0.123], [0] * labels**2)}, final=True)
    changed = fedmeta(*evaluate_args)
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.count("kept from") == 6 and "fedavg+finetune (seed" not in changed.stdout
    assert f"{site}: 2 of 2 episodes kept" in " ".join(changed.stdout.split())
    resumed = json.loads((scores_dir / "fedavg+finetune-0.json").read_text())
    assert resumed["auc"]["1"][:2] == [0.123, 0.123] and 0.123 not in resumed["auc"]["1"][2:]
    assert not (scores_dir / "fedavg+finetune-0.progress.json").exists()  # its episodes are in the scores now
    assert fedmeta(*evaluate_args, "--rescore").stdout.count("kept from") == 0
    rows = json.loads((out / "headline.json").read_text())  # now at the changed rate
    bad = fedmeta("evaluate", "--scenario", scenario, "--model", "maml=/nowhere", "--supervised", str(supervised[0]))
    assert bad.returncode == 2 and "give NAME=DIR" in bad.stderr
    # a recipe sweep scores on the validation sites: its rows sit beside the reported ones, never replace them
    swept = fedmeta(
        "evaluate",
        "--scenario",
        scenario,
        "--sites",
        "validation",
        "--model",
        f"maml={maml}",
        "--supervised",
        str(supervised[0]),
        "--no-local",
        "--shots",
        "2",
        "--queries",
        "3",
        "--episodes",
        "2",
        "--out",
        str(out),
    )
    assert swept.returncode == 0, swept.stderr
    after = json.loads((out / "headline.json").read_text())
    assert [r for r in after if r["sites"] == "heldout"] == rows
    assert {(r["method"], r["sites"]) for r in after if r["sites"] != "heldout"} == {
        ("maml", "validation"),
        ("fedavg+finetune", "validation"),
        ("fedavg+linear-probe", "validation"),
        ("fedavg+prototypes", "validation"),
    }
    assert "### tiny-roles, validation sites" in (out / "headline.md").read_text()
    assert (out / "tiny-roles-validation-forest.png").stat().st_size > 0


@pytest.mark.parametrize("algorithm", ["maml", "meta-sgd", "anil"])
def test_a_meta_models_trajectory_gives_every_step_count_exactly(scenario, tmp_path, algorithm):
    """Tuning a meta-model's steps adapts once, continuing from each count to the next: the logits
    equal those of each count adapted alone, and `logits` takes the model's eval-inner-steps."""
    episode = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=2, role="validation")).batches[2]
    episode = next(iter(episode.values()))[0]
    model_dir = saved(tmp_path, algorithm)
    at = MetaLearned(model_dir).logits_at(episode, 3, [0, 1, 3])
    for count in (0, 1, 3):
        assert torch.equal(at[count], MetaLearned(model_dir, steps=count).logits(episode, 3))
    assert not torch.equal(at[1], at[3])
    assert torch.equal(MetaLearned(model_dir).logits(episode, 3), MetaLearned(model_dir, steps=2).logits(episode, 3))


def test_a_meta_models_inner_rate_is_a_setting_at_the_new_site(scenario, tmp_path):
    """lr_scale adapts at a fraction of the meta-trained rate: the same start, another trajectory,
    a score identity of its own; the default adds no key, so scores kept from before still match."""
    episode = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=1, role="validation")).batches[2]
    episode = next(iter(episode.values()))[0]
    model_dir = saved(tmp_path, "maml")
    own, slow = MetaLearned(model_dir), MetaLearned(model_dir, lr_scale=0.3)
    assert "lr_scale" not in own.identity() and slow.identity() == {**own.identity(), "lr_scale": 0.3}
    at_own, at_slow = own.logits_at(episode, 3, [0, 2]), slow.logits_at(episode, 3, [0, 2])
    assert torch.equal(at_own[0], at_slow[0]) and not torch.equal(at_own[2], at_slow[2])
    with pytest.raises(ValueError, match=r"protonet .*no inner rate to scale; drop lr_scale"):
        MetaLearned(saved(tmp_path, "protonet"), lr_scale=0.3)


def test_one_trajectory_gives_every_step_count_exactly(scenario, tmp_path):
    """Tuning `steps` runs the longest fit once: its snapshots equal fits of each length alone."""
    from simulation.benchmark import score_steps

    model = saved(tmp_path, "fedavg")
    episodes = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=2, role="validation"))
    episode = next(iter(next(iter(episodes.batches[2].values()))))
    classes = episodes.num_classes()
    makers = {
        "finetune": lambda s: FineTune(model, steps=s),
        "linear-probe": lambda s: LinearProbe(model, steps=s),
        "local": lambda s: Scratch(MODEL, steps=s),
    }
    for name, make in makers.items():
        at = make(7).logits_at(episode, classes, [0, 3, 7])
        assert torch.equal(at[3], make(3).logits(episode, classes)), name
        assert torch.equal(at[7], make(7).logits(episode, classes)), name
        assert not torch.equal(at[0], at[7]), name  # training moved it
        scored = score_steps(make(7), episodes, [3, 7])
        assert np.array_equal(scored[3].acc[2], score(make(3), episodes).acc[2]), name


def test_fine_tuning_and_local_training_agree_with_and_without_the_fused_kernels(scenario, tmp_path):
    """The baselines adapt with the meta-learners' fused C ops where this machine builds them:
    the same logits as torch's operators to float rounding, and scores kept under one choice
    are not taken for the other's (the choice is part of the adapter's identity)."""
    from common.native import resolve_kernels

    if resolve_kernels("auto") is None:
        pytest.skip("the fused kernels do not build on this machine")
    model = saved(tmp_path, "fedavg")
    episodes = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=2, role="validation"))
    episode = next(iter(next(iter(episodes.batches[2].values()))))
    classes = episodes.num_classes()
    for make in (lambda k: FineTune(model, steps=5, lr=1e-2, kernels=k), lambda k: Scratch(MODEL, steps=5, kernels=k)):
        native, torch_ops = make("native"), make("torch")
        assert native.identity() != torch_ops.identity()
        fused, plain = native.logits(episode, classes), torch_ops.logits(episode, classes)
        assert torch.allclose(fused, plain, atol=1e-4)
        assert not torch.equal(fused, plain)  # the C ops ran: float rounding differs from torch's
        assert not torch.equal(fused, torch_ops.logits_at(episode, classes, [0])[0])  # training moved them


def test_a_batch_of_episodes_trains_as_torch_adam_does_one_at_a_time(scenario, tmp_path):
    """A batch of episodes (how the benchmark scores them) gives each episode what torch.optim.Adam
    on that episode alone gives, in order: fine-tuning, local training and a linear probe."""
    import torch.nn.functional as F

    from common.tasks import TaskBatch

    model = saved(tmp_path, "fedavg")
    episodes = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=4, role="validation"))
    batch = TaskBatch.stack([ep for site in episodes.batches[2].values() for ep in site])
    classes, steps, lr = episodes.num_classes(), 6, 1e-2
    finetune = FineTune(model, steps=steps, lr=lr, kernels="torch")  # the reference below is torch's operators
    local = Scratch(MODEL, steps=steps, lr=lr, kernels="torch")
    for adapter in (finetune, local):
        batched = adapter.batch_logits(batch, classes)
        net, params = (
            (finetune.loaded.model, finetune.loaded.params) if adapter is finetune else local._initial[classes]
        )
        assert batched.shape == (len(batch), batch.query_y.shape[1], classes)
        for i in range(len(batch)):
            episode = batch[i]
            leaves = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
            optimizer = torch.optim.Adam(leaves.values(), lr=lr)
            for _ in range(steps):
                optimizer.zero_grad()
                F.cross_entropy(net.logits(leaves, net.prepare(episode.support_x)), episode.support_y).backward()
                optimizer.step()
            with torch.no_grad():
                alone = net.logits(leaves, net.prepare(episode.query_x))
            assert torch.allclose(batched[i], alone, atol=1e-4), (adapter.name, i)
    probe = LinearProbe(model, steps=steps)
    together = probe.batch_logits(batch, classes)
    for i in range(len(batch)):
        alone = probe.batch_logits(TaskBatch.stack([batch[i]]), classes)[0]
        finite = torch.isfinite(alone)
        assert torch.equal(finite, torch.isfinite(together[i]))  # absent classes masked, per episode
        assert torch.allclose(together[i][finite], alone[finite], atol=1e-5)


def test_tuning_prefers_fewer_steps_only_within_the_tolerance():
    """`choose`: the best try, unless one with fewer steps is within TOLERANCE of it."""
    from simulation.benchmark import TOLERANCE, choose

    def key(**point):
        import json

        return json.dumps(point, sort_keys=True)

    tries = {key(lr=3e-5, steps=200): 0.7619, key(lr=3e-5, steps=50): 0.7615, key(lr=1e-4, steps=25): 0.7557}
    assert choose(tries) == {"lr": 3e-5, "steps": 50}  # 0.04 points below the best: four times fewer steps
    assert choose(tries, tolerance=0.0) == {"lr": 3e-5, "steps": 200}
    far = {key(steps=100): 0.80, key(steps=25): 0.80 - 2 * TOLERANCE}
    assert choose(far) == {"steps": 100}
    assert choose({key(lr=0.1, weight_decay=0.0): 0.5, key(lr=0.01, weight_decay=0.0): 0.6}) == {
        "lr": 0.01,
        "weight_decay": 0.0,
    }


def test_an_adapter_on_the_cpu_keeps_its_identity_and_its_scores(scenario, tmp_path):
    """`--device cpu` (the default) changes nothing: the same identity (kept CPU scores still
    match) and the same scores to the bit; the device is named only off the CPU."""
    episodes = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=2))
    model = saved(tmp_path, "fedavg")
    for make in (lambda: FineTune(model, steps=3), lambda: Scratch(MODEL, steps=3), lambda: MetaLearned(model)):
        plain, moved = make(), make().to(torch.device("cpu"))
        assert moved.identity() == plain.identity() and "device" not in moved.identity()
        assert np.array_equal(score(moved, episodes).acc[2], score(plain, episodes).acc[2])


def test_the_cli_refuses_a_gpu_it_does_not_have(scenario, tmp_path):
    """`--device cuda` on a machine whose torch sees no GPU stops before scoring, saying what to do."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from typer.testing import CliRunner

    from fedmeta.cli import app

    model = saved(tmp_path, "fedavg")
    for command in (
        ["benchmark", "evaluate", "--scenario", scenario, "--supervised", str(model), "--out", str(tmp_path / "o")],
        ["benchmark", "tune", "--scenario", scenario, "--supervised", str(model), "--out", str(tmp_path / "t.json")],
    ):
        result = CliRunner().invoke(app, [*command, "--device", "cuda"])
        assert result.exit_code != 0
        assert "sees no CUDA device" in result.output and "device=cpu" in result.output, result.output
        assert not (tmp_path / "o").exists() and not (tmp_path / "t.json").exists()


def test_scores_a_gpu_made_are_kept_on_the_cpu_only_when_accepted(scenario, tmp_path):
    """A scores file a GPU run left (its identity names `cuda`) is not taken by a CPU evaluation,
    unless `accept` names cuda: then it is kept as written and the console says where it was made;
    scores another adapter setting made are still scored again."""
    from simulation.benchmark import identity_on, score_methods, write_scores

    episodes = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=2))
    model = saved(tmp_path, "fedavg")
    adapter = Prototypes(model)
    directory = tmp_path / "scores"
    directory.mkdir()
    made = score(adapter, episodes)
    marked = Scores(made.method, {2: np.full_like(made.acc[2], 0.125)}, made.auc, made.digests, made.confusion)
    gpu_identity = identity_on(adapter.identity(), "cuda")
    assert (
        gpu_identity == {**adapter.identity(), "device": "cuda"}
        and identity_on(gpu_identity, "cpu") == adapter.identity()
    )
    write_scores(directory / "fedavg+prototypes-0.json", marked, gpu_identity)
    said: list[str] = []
    plain = score_methods({"fedavg+prototypes": [adapter]}, episodes, directory, say=said.append)
    assert np.array_equal(plain["fedavg+prototypes"][0].acc[2], made.acc[2])  # scored again on the CPU
    write_scores(directory / "fedavg+prototypes-0.json", marked, gpu_identity)
    said.clear()
    kept = score_methods({"fedavg+prototypes": [adapter]}, episodes, directory, say=said.append, accept=("cuda",))
    assert np.all(kept["fedavg+prototypes"][0].acc[2] == 0.125)  # the GPU's file, as written
    assert any("(scored on cuda)" in line for line in said), said
    other = LinearProbe(model, steps=1)  # another adapter's GPU scores are never taken for it
    write_scores(
        directory / "fedavg+linear-probe-0.json", marked, identity_on(LinearProbe(model, steps=2).identity(), "cuda")
    )
    again = score_methods({"fedavg+linear-probe": [other]}, episodes, directory, accept=("cuda",))
    assert not np.all(again["fedavg+linear-probe"][0].acc[2] == 0.125)


def test_the_cli_refuses_an_unknown_device_to_accept(scenario, tmp_path):
    from typer.testing import CliRunner

    from fedmeta.cli import app

    model = saved(tmp_path, "fedavg")
    command = [
        "benchmark",
        "evaluate",
        "--scenario",
        scenario,
        "--supervised",
        str(model),
        "--out",
        str(tmp_path / "o"),
    ]
    result = CliRunner().invoke(app, [*command, "--accept-device", "tpu"])
    assert result.exit_code != 0 and "--accept-device tpu" in result.output and "cpu or cuda" in result.output
    assert not (tmp_path / "o").exists()


def test_a_multi_thread_scoring_beside_another_process_is_told_to_use_one_thread(scenario, tmp_path, claimant):
    """Two processes sharing the cores, one of them on 2 threads, ran 2.8x to 22x slower than alone: a
    process that finds another live scorer here while it computes on more than one thread says
    so, once, with the fix; on one thread, or with nobody else scoring, it says nothing."""
    from simulation.benchmark import score_methods

    model = saved(tmp_path, "fedavg")
    episodes = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=4))
    threads = torch.get_num_threads()
    try:
        for count, busy, expected in ((2, True, 1), (1, True, 0), (2, False, 0)):
            directory = tmp_path / f"scores-{count}-{busy}"
            directory.mkdir()
            if busy:  # another process on this machine holds another method-seed's claim
                other = claimant(directory / "other-0.claim")
            said: list[str] = []
            torch.set_num_threads(count)
            adapters = {"a": [StopsAfter(model, steps=1)], "b": [StopsAfter(model, steps=1)]}
            score_methods(adapters, episodes, directory, say=said.append)
            warnings = [line for line in said if line.startswith("warning:")]
            assert len(warnings) == expected, (count, busy, said)
            assert all(f"pid {other.pid} on this machine" in w and "OMP_NUM_THREADS=1" in w for w in warnings)
    finally:
        torch.set_num_threads(threads)
