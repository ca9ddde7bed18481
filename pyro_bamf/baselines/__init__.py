"""Simple, strong baselines scored on the same split and pools as BAMF.

Re-runs across the field found tuned simple methods matching most neural recommenders
(Dacrema et al., RecSys 2019; Rendle et al., 2021): popularity, ItemKNN and EASE are written
here in numpy/scipy; iALS and BPR come from the ``implicit`` library, an optional extra
(``pip install 'pyro-bamf[implicit]'``). Each method's hyper-parameters are chosen on the
validation part over its ``grid`` (:mod:`.tuning`); ``pyro-bamf baseline`` writes a run
directory that ``pyro-bamf compare`` sets beside BAMF's.

A method is a :class:`Baseline` subclass registered in ``BASELINES``; register your own with
``BASELINES.register("name", MyBaseline)`` (or name it ``"package.module:MyBaseline"``).
"""

from ..registry import Registry
from .base import Baseline, train_matrix
from .ease import EASE
from .factorization import BPR, IALS, MissingExtraError
from .itemknn import ItemKNN
from .popularity import Popularity
from .tuning import SELECTION, Selection, grid_edges, grid_points, select_on_validation

BASELINES = Registry("baseline", "pyro_bamf.baselines.BASELINES.register")
for _name, _method in (
    ("popularity", Popularity), ("itemknn", ItemKNN), ("ease", EASE), ("ials", IALS), ("bpr", BPR),
):  # fmt: skip
    BASELINES.register(_name, _method)

__all__ = [
    "BASELINES", "BPR", "EASE", "IALS", "SELECTION", "Baseline", "ItemKNN", "MissingExtraError",
    "Popularity", "Selection", "grid_edges", "grid_points", "select_on_validation", "train_matrix",
]  # fmt: skip
