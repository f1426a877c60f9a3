import sys

from lmid.cli import main

sys.exit(main())
