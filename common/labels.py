"""Class names matched across parties: a site's labels.csv against a consortium's label space, or
against the classes a model's head was trained on. Hospitals spell a class their own way, so the
match ignores case, spaces, '-' and '_' ("Kidney_Left" is "kidney-left"), and a shorter name also
finds a joined label space's "dataset:name" ("monocyte" is "bloodmnist:monocyte") and a name
without its closing parenthesis ("immature granulocytes" is BloodMNIST's "immature
granulocytes(myelocytes, metamyelocytes and promyelocytes)")."""

from __future__ import annotations

import re
from collections.abc import Sequence

from common.data.dataset import Problem

PARENTHESIS = re.compile(r"\s*\([^()]*\)\s*$")


def key(name: str) -> str:
    """The form two spellings of one class share."""
    return " ".join(re.split(r"[\s_\-]+", name.strip().lower()))


def short_forms(name: str) -> set[str]:
    """The keys a shorter name of the class `name` has: without its dataset prefix and/or its
    closing parenthesis."""
    bare = name.rsplit(":", 1)[-1]
    return {key(form) for form in (bare, PARENTHESIS.sub("", name), PARENTHESIS.sub("", bare))} - {key(name)}


def match_classes(known: Sequence[str], names: Sequence[str]) -> list[int | None]:
    """For each of `names`, its index in `known` (None: not there). A name that fits two known
    classes, or two names that fit one, is a ValueError naming them."""
    full: dict[str, list[int]] = {}
    short: dict[str, list[int]] = {}
    for index, name in enumerate(known):
        full.setdefault(key(name), []).append(index)
        for form in short_forms(name):
            short.setdefault(form, []).append(index)
    found: list[int | None] = []
    for name in names:
        fits = full.get(key(name)) or short.get(key(name), [])
        if len(fits) > 1:
            raise ValueError(
                f"class {name!r} fits {len(fits)} classes ({', '.join(known[i] for i in fits)}): give its full name"
            )
        found.append(fits[0] if fits else None)
    twice = [names[i] for i, index in enumerate(found) if index is not None and found.count(index) > 1]
    if twice:
        raise ValueError(f"classes {twice} are one class spelt two ways: give each class once")
    return found


def consortium_problems(consortium: Sequence[str], names: Sequence[str]) -> tuple[list[int | None], list[Problem]]:
    """A hospital folder's classes `names` matched to its consortium's (`match_classes`), and
    what is wrong, as data problems: a class the consortium lacks, a name that fits two of its
    classes. A data problem stays in the site's own log (the coordinator learns only a count)."""
    try:
        found = match_classes(consortium, names)
    except ValueError as error:
        return [None] * len(names), [Problem("labels.csv", str(error), "give each class one name the consortium lists")]
    listed = ", ".join(consortium)
    return found, [
        Problem(
            f"class {name!r}",
            f"is not among the consortium's classes ({listed})",
            "rename it in labels.csv to one of them, or ask the ML lead to add it to the scenario's labels",
        )
        for name, index in zip(names, found)
        if index is None
    ]
