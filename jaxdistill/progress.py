"""A progress bar for long host-side loops (tqdm), silenced when asked or when not interactive."""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str = "", disable: bool = False, **kwargs):
  """A ``tqdm`` bar; disabled by ``disable=True`` or ``JAXDISTILL_PROGRESS=0``. Writes to stderr."""
  if os.environ.get("JAXDISTILL_PROGRESS", "1") == "0":
    disable = True
  return tqdm(total=total, desc=desc, disable=disable, file=sys.stderr, dynamic_ncols=True,
              mininterval=1.0, **kwargs)
