"""``python -m rsf``: the same as the ``rsf`` console script."""

import os

from .main import main

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
raise SystemExit(main())
