"""The built-in synthetic face benchmark (DESIGN.md "The built-in benchmark").

Face-like identities in four neutral groups (GroupA..GroupD) with group-dependent appearance and
difficulty, rendered at 112x112 under varying pose, illumination, expression and noise:

- :func:`make_train` -- imbalanced training split (60/20/12/8 %, like MS1MV2);
- :func:`make_verification` -- balanced verification split, 10 folds per group (like RFW);
- :func:`make_synthetic_domain` -- unlabelled faces rendered differently (the stand-in for GAN faces);
- :func:`open_builtin` -- the ``builtin`` / ``builtin:SIZE`` benchmark reader.

Always synthetic: results on it show the mechanism, real conclusions need RFW.
"""
from .params import DEFAULT_GROUPS, N_PARAMS, PARAM_NAMES, GroupSpec, sample_identities
from .render import render_faces
from .splits import (
                     SIZES,
                     SYNTHETIC_NOTE,
                     TRAIN_SHARES,
                     TrainSplit,
                     make_calibration,
                     make_synthetic_domain,
                     make_train,
                     make_verification,
                     open_builtin,
                     render_identities,
                     sample_group_identities,
)

GROUP_NAMES = tuple(g.name for g in DEFAULT_GROUPS)

__all__ = [
                     "DEFAULT_GROUPS",
                     "GROUP_NAMES",
                     "N_PARAMS",
                     "PARAM_NAMES",
                     "SIZES",
                     "SYNTHETIC_NOTE",
                     "TRAIN_SHARES",
                     "GroupSpec",
                     "TrainSplit",
                     "make_calibration",
                     "make_synthetic_domain",
                     "make_train",
                     "make_verification",
                     "open_builtin",
                     "render_faces",
                     "render_identities",
                     "sample_group_identities",
                     "sample_identities",
]
