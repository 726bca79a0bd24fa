"""python pretrained/download.py [--dit 800ep]: fetch the released weights into pretrained/ (see README.md here)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.download import main  # noqa: E402

if __name__ == "__main__":
    main()
