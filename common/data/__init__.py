"""Site data: labelled image sets from MedMNIST files, hospital folders or the synthetic default.

Everything here returns `LabelledImages` (float images (M, C, *S) and integer labels), the
input of `common.tasks.EpisodeSampler`. Loading happens inside a site's client only.
"""

from common.data.dataset import DataError, LabelledImages, Problem
from common.data.shift import SiteShift

__all__ = ["DataError", "LabelledImages", "Problem", "SiteShift"]
