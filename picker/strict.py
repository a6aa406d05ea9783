"""StrictModel: the base of every settings and worker model the picker validates.

One place for the two refusals all of them share: an unknown key is a typo to name, not a
setting to ignore, and inf or nan (YAML `.inf`, JSON `1e999`) is no duration, limit, weight or
cost.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictModel"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
