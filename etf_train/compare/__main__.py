"""python -m etf_train.compare"""

import sys

from . import main

sys.exit(main())
