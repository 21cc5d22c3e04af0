import torch

from common.data.dataset import LabelledImages, pool


def _site(classes: tuple[str, ...], labels: list[int]) -> LabelledImages:
    n = len(labels)
    return LabelledImages(torch.zeros(n, 1, 4, 4), torch.tensor(labels), classes, tuple(f"i{k}" for k in range(n)))


def test_one_label_space_keeps_its_labels_and_keeps_sites_apart():
    pooled = pool({"a": _site(("x", "y"), [0, 1]), "b": _site(("x", "y"), [1, 1])})
    assert pooled.classes == ("x", "y")
    assert pooled.labels.tolist() == [0, 1, 1, 1]
    assert pooled.ids == ("a/i0", "a/i1", "b/i0", "b/i1")
    assert pooled.patients == pooled.ids  # a site's image ids are its patients unless given


def test_different_label_spaces_never_merge_a_class():
    pooled = pool({"a": _site(("x", "y"), [0, 1]), "b": _site(("x",), [0, 0])})
    assert pooled.classes == ("a/x", "a/y", "b/x")
    assert pooled.labels.tolist() == [0, 1, 2, 2]
